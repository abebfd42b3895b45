/* Entry from the 64-bit Linux boot protocol (long mode, paging on, RSI = boot_params)
 * and the interrupt stubs. */

	.section .text.entry, "ax"
	.code64
	.globl _start
_start:
	/* The VMM timestamps the first guest exit for the boot benchmark. */
	movb	$0x01, %al
	outb	%al, $0x80

	movq	%rsi, %r12
	movq	$stack_top, %rsp
	xorl	%ebp, %ebp
	cld
	/* A plain loop, not rep stosq: every emulated instruction is a risk on this host,
	 * and .bss is small. */
	movq	$__bss_start, %rdi
	movq	$__bss_end, %rcx
1:	cmpq	%rcx, %rdi
	jae	2f
	movq	$0, (%rdi)
	addq	$8, %rdi
	jmp	1b
2:	movq	%r12, %rdi
	call	tg_main
3:	cli
	hlt
	jmp	3b

/* One 16-byte slot per vector (a stub is at most 2+5+5 bytes), so the IDT code computes
 * stub addresses instead of reading a table. Vectors without a CPU error code push 0
 * to keep one frame layout. */
	.altmacro
	.macro	isr_stub vec
	.p2align 4
	.if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	.else
	pushq	$0
	.endif
	pushq	$\vec
	jmp	isr_common
	.endm

	.text
	.p2align 4
	.globl	isr_stubs
isr_stubs:
	.set	vec, 0
	.rept	256
	isr_stub %vec
	.set	vec, vec + 1
	.endr

/* Saves the registers as struct tg_frame (main.c) and calls isr_dispatch(frame). */
isr_common:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rsp, %rdi
	call	isr_dispatch
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rbp
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
	addq	$16, %rsp
	iretq

	.section .bss
	.p2align 4
stack_bottom:
	.skip	16384
stack_top:

	.section .note.GNU-stack, "", @progbits
