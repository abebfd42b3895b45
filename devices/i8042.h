/* The part of the PC keyboard controller a microVM needs: Linux's `reboot=k` pulses the
 * reset line with command 0xFE on port 0x64, which ends the VM. Status reads say "no data,
 * ready for input" so probing drivers give up quickly. */
#ifndef MITOS_I8042_H
#define MITOS_I8042_H

#include <stdbool.h>
#include <stdint.h>

#define I8042_CMD_RESET 0xfe

struct i8042 {
	void (*reset)(void *ctx);
	void *ctx;
};

/* Port-I/O handler for ports 0x60..0x64 (off 0 = data, off 4 = command/status). */
void i8042_pio(void *opaque, uint64_t off, bool is_write, void *data, unsigned len);

#endif
