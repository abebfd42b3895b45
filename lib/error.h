/* Error reporting shared by every module: a negative errno for the caller to branch on
 * plus one human sentence for the user. Functions return 0 or -errno; when they take a
 * struct mitos_err they also fill its message. */
#ifndef MITOS_ERROR_H
#define MITOS_ERROR_H

#include <stdarg.h>
#include <stddef.h>

struct mitos_err {
	int code;        /* negative errno, 0 when no error was recorded */
	/* What a client is told the failure was (serve's enum api_err), 0 when unclassified.
	 * The layer that fails knows the errno and the sentence, but seldom what the failure
	 * means to a client: a missing file is a bad request in one call and a broken server
	 * in another. The layer that does know sets it; the ones below leave it 0. */
	int kind;
	char msg[512];
};

/* Records a failure nobody has classified yet: code, a formatted message and kind 0 (if
 * e is not NULL). Returns code unchanged, so callers can write
 * `return mitos_err_set(e, -EINVAL, "...")`. */
int mitos_err_set(struct mitos_err *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The same from a va_list, for setters that record more (serve's api_fail sets the kind). */
int mitos_err_vset(struct mitos_err *e, int code, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

#endif
