/* Entries: the 64-bit Linux boot protocol (_start: long mode, paging on, RSI =
 * boot_params) as mitos-vmm boots a vmlinux, and PVH (pvh_start: 32-bit protected mode,
 * paging off, EBX = hvm_start_info) as QEMU microvm, Firecracker and Cloud Hypervisor
 * boot an uncompressed ELF. Then the interrupt stubs. */

/* From paging off to long mode on the page tables in CR3: PAE, EFER.LME, then CR0.PE
 * and PG at once. The same text serves the 32-bit PVH entry and the 16-bit AP
 * trampoline (the assembler adds the operand-size prefixes there). */
	.macro	long_mode_on
	movl	%cr4, %eax
	orl	$0x20, %eax		/* CR4.PAE */
	movl	%eax, %cr4
	movl	$0xc0000080, %ecx	/* IA32_EFER */
	rdmsr
	orl	$0x100, %eax		/* EFER.LME */
	wrmsr
	movl	%cr0, %eax
	orl	$0x80000001, %eax	/* CR0.PG | CR0.PE */
	movl	%eax, %cr0
	.endm

	.section .text.entry, "ax"
	.code64
	.globl _start
_start:
	/* The VMM timestamps the first guest exit for the boot benchmark. */
	movb	$0x01, %al
	outb	%al, $0x80

	movq	%rsi, %r12
	movq	$tg_main, %r13
common_64:
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
	call	*%r13
3:	cli
	hlt
	jmp	3b

/* PVH: the loader leaves a flat 32-bit CS and data segments, CR0.PE on and paging off.
 * Long mode needs paging, so switch to the identity map below (the first 4 GiB: the
 * image, the MMIO of the LAPIC and IOAPIC), then continue on the common 64-bit path
 * with the C hook that reads hvm_start_info. */
	.code32
	.globl	pvh_start
pvh_start:
	movb	$0x01, %al
	outb	%al, $0x80
	movl	%ebx, %esi
	movl	$pvh_pml4, %eax
	movl	%eax, %cr3
	long_mode_on
	lgdt	pvh_gdt_desc
	ljmp	$0x08, $pvh_long
	.code64
pvh_long:
	movl	$0x10, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	movl	%esi, %r12d		/* zero-extends: hvm_start_info is below 4 GiB */
	movq	$tg_pvh_main, %r13
	jmp	common_64

/* The PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY = 18): the 32-bit physical entry. */
	.section .note.pvh, "a", @note
	.p2align 2
	.long	4, 4, 18
	.asciz	"Xen"
	.long	pvh_start

/* Page tables and GDT for the PVH path, built by the assembler rather than by a loop so
 * the emulated CPL0 start-up stays a handful of instructions. 2 MiB pages, RW+present. */
	.section .data.pvh, "aw"
	.p2align 12
pvh_pml4:
	.quad	pvh_pdpt + 0x03
	.fill	511, 8, 0
pvh_pdpt:
	.quad	pvh_pd + 0x0000 + 0x03
	.quad	pvh_pd + 0x1000 + 0x03
	.quad	pvh_pd + 0x2000 + 0x03
	.quad	pvh_pd + 0x3000 + 0x03
	.fill	508, 8, 0
pvh_pd:
	.set	pde, 0
	.rept	2048
	.quad	(pde << 21) | 0x83
	.set	pde, pde + 1
	.endr
	.p2align 3
pvh_gdt:
	.quad	0
	.quad	0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: data */
pvh_gdt_desc:
	.word	pvh_gdt_desc - pvh_gdt - 1
	.long	pvh_gdt

/* An application processor's way in (smp.c copies this below 1 MiB, fills ap_params
 * and sends INIT/SIPI): real mode at CS = copy >> 4, IP 0; straight to long mode on
 * the caller's page tables (PAE, EFER.LME, then CR0.PE and PG at once), a far jump to
 * 64-bit code, then the C entry on its own stack. Only CS-relative and RIP-relative
 * addressing, so the copy runs wherever it lands; the absolute addresses it needs are
 * in ap_params. */
	.section .rodata.ap, "a"
	.globl	ap_trampoline, ap_trampoline_end, ap_gdt, ap_long, ap_params
	.code16
ap_trampoline:
	cli
	lgdtl	%cs:(ap_params - ap_trampoline)
	movl	%cs:(ap_params + 12 - ap_trampoline), %eax
	movl	%eax, %cr3
	long_mode_on
	ljmpl	*%cs:(ap_params + 6 - ap_trampoline)
	.code64
ap_long:
	movl	$0x10, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movq	ap_params + 16(%rip), %rsp
	movq	ap_params + 24(%rip), %rax
	call	*%rax
1:	cli
	hlt
	jmp	1b
	.p2align 3
ap_gdt:
	.quad	0
	.quad	0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: data */
/* struct ap_params (smp.c): GDT limit and base, far pointer to ap_long, CR3, stack,
 * entry. */
	.p2align 3
ap_params:
	.fill	32, 1, 0
ap_trampoline_end:

	.text
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
