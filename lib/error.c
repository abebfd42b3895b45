#include "lib/error.h"

#include <stdio.h>

int mitos_err_vset(struct mitos_err *e, int code, const char *fmt, va_list ap)
{
	if (e) {
		vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
		e->code = code;
		e->kind = 0;
	}
	return code;
}

int mitos_err_set(struct mitos_err *e, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mitos_err_vset(e, code, fmt, ap);
	va_end(ap);
	return code;
}
