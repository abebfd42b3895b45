/* Every failure a client can see: a stable code (what clients branch on; the
 * names of the Mitos sandbox-server's catalogue), the HTTP status and Connect
 * code it maps to, and a default remediation. Bodies are
 * {"error":{"code","message","cause","remediation"}}; every string in them goes
 * through api_redact() first, so a bearer token never comes back to a client. */
#ifndef MITOS_API_ERRORS_H
#define MITOS_API_ERRORS_H

#include <stddef.h>

#include "lib/error.h"

enum api_err {
	/* No class recorded (a zeroed struct mitos_err's kind): answered as AE_INTERNAL. */
	AE_NONE = 0,
	AE_NOT_FOUND,
	AE_INVALID_SANDBOX_ID,
	AE_INVALID_ARGUMENT,
	AE_INVALID_JSON,
	AE_TIMEOUT_TOO_LARGE,
	AE_BAD_REQUEST,
	AE_TIMEOUT,
	AE_REQUEST_TIMEOUT,
	AE_FILE_FAILED,
	AE_EXEC_FAILED,
	AE_UNAUTHENTICATED,
	/* Known, and not for this caller (E2B: a sandbox host without its traffic token). */
	AE_FORBIDDEN,
	AE_ENGINE_UNAVAILABLE,
	/* A sandbox that failed on its way to ready: the same code, a remediation about the
	 * sandbox (its template, its console), not the host's engines. */
	AE_START_FAILED,
	AE_PAYLOAD_TOO_LARGE,
	AE_HEADERS_TOO_LARGE,
	AE_METHOD_NOT_ALLOWED,
	AE_UNSUPPORTED_MEDIA_TYPE,
	AE_CONFLICT,
	/* A sandbox deleted by its user while it started: its create is not to be retried. */
	AE_DELETED_STARTING,
	AE_SANDBOX_NOT_RUNNING,
	AE_LIMIT_EXCEEDED,
	AE_UNAVAILABLE,
	AE_NODE_DRAINING,
	AE_UNIMPLEMENTED,
	AE_HTTP_VERSION,
	AE_INTERNAL,
	AE_COUNT_,
};

const char *api_err_code(enum api_err e);
int api_err_status(enum api_err e);
const char *api_err_connect_code(enum api_err e);
const char *api_err_remediation(enum api_err e);

/* Records a failure whose meaning to a client is known: code (a negative errno), kind
 * and a formatted message in e (if not NULL). Returns code. */
int api_fail(struct mitos_err *e, int code, enum api_err kind, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Sets the secret that api_redact() removes (NULL: only "Bearer ..." patterns). */
void api_redact_set_token(const char *token);
/* Returns a malloc'd copy of s with the token and any "Bearer <x>" value
 * replaced by [REDACTED]. NULL in, NULL out. */
char *api_redact(const char *s);

/* Malloc'd JSON {"error":{...}}; remediation NULL picks the default. */
char *api_error_json(enum api_err e, const char *message, const char *cause, const char *remediation);
/* The inner object only ({"code":...}), for embedding; with_connect adds the
 * Connect code as "code" and the stable one as "mitos_code". */
struct cJSON;
struct cJSON *api_error_object(enum api_err e, const char *message, const char *cause,
			       const char *remediation, int connect_style);

/* sandbox ids: ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ */
int api_valid_id(const char *id);

#endif
