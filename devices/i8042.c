#include "i8042.h"

#include <string.h>

void i8042_pio(void *opaque, uint64_t off, bool is_write, void *data, unsigned len)
{
	struct i8042 *k = opaque;
	if (!is_write) {
		memset(data, 0, len);
		return;
	}
	if (off == 4 && len == 1 && *(const uint8_t *)data == I8042_CMD_RESET && k->reset)
		k->reset(k->ctx);
}
