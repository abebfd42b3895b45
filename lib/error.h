/* Error reporting shared by every module: a negative errno for the caller to branch on
 * plus one human sentence for the user. Functions return 0 or -errno; when they take a
 * struct mitos_err they also fill its message. */
#ifndef MITOS_ERROR_H
#define MITOS_ERROR_H

#include <stddef.h>

struct mitos_err {
	int code;        /* negative errno, 0 when no error was recorded */
	char msg[512];
};

/* Records a formatted message (if e is not NULL) and returns code unchanged, so callers
 * can write `return mitos_err_set(e, -EINVAL, "...")`. */
int mitos_err_set(struct mitos_err *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
