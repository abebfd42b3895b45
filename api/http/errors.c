#include "api/http/errors.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct err_info {
	const char *code;
	int status;
	const char *connect;
	const char *remediation;
};

static const struct err_info infos[AE_COUNT_] = {
	[AE_NOT_FOUND] = { "not_found", 404, "not_found",
		"check the id or path; GET /v1/sandboxes lists the sandboxes that exist" },
	[AE_INVALID_SANDBOX_ID] = { "invalid_input", 400, "invalid_argument",
		"sandbox ids match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$" },
	[AE_INVALID_ARGUMENT] = { "invalid_input", 400, "invalid_argument",
		"fix the request as the message says; api/API.md documents every field" },
	[AE_INVALID_JSON] = { "invalid_json", 400, "invalid_argument",
		"send a JSON object body matching the sandbox API contract for this endpoint (api/API.md)" },
	[AE_TIMEOUT_TOO_LARGE] = { "timeout_too_large", 400, "invalid_argument",
		"ask for a timeout at or below the ceiling in the message; a timeout is honoured or refused, "
		"never silently reduced" },
	[AE_BAD_REQUEST] = { "bad_request", 400, "invalid_argument",
		"send a well-formed HTTP/1.1 request" },
	[AE_TIMEOUT] = { "exec_timeout", 504, "deadline_exceeded",
		"raise the timeout, or make the command finish sooner" },
	[AE_REQUEST_TIMEOUT] = { "timeout", 408, "deadline_exceeded",
		"send the request headers and body without long pauses" },
	[AE_FILE_FAILED] = { "file_failed", 400, "failed_precondition",
		"check the path, its parent directory and its permissions inside the sandbox" },
	[AE_EXEC_FAILED] = { "exec_failed", 400, "failed_precondition",
		"check that the command exists inside the sandbox and the cwd is a directory" },
	[AE_UNAUTHENTICATED] = { "unauthorized", 401, "unauthenticated",
		"send Authorization: Bearer <token> with the token from the server's --token-file" },
	[AE_FORBIDDEN] = { "forbidden", 403, "permission_denied",
		"send the credential the message names" },
	[AE_ENGINE_UNAVAILABLE] = { "engine_unavailable", 503, "unavailable",
		"run `mitos-vmm check` to see which engines this host supports" },
	[AE_START_FAILED] = { "engine_unavailable", 503, "unavailable",
		"the message says why the sandbox did not start (its template's workload output, its VM's "
		"last console lines, the step a start deadline stopped at; serve's log has it too): fix "
		"the template, or retry if the host was overloaded" },
	[AE_PAYLOAD_TOO_LARGE] = { "body_too_large", 413, "resource_exhausted",
		"send a smaller body; file writes take up to the server's --max-file-body" },
	[AE_HEADERS_TOO_LARGE] = { "body_too_large", 431, "resource_exhausted",
		"send fewer or smaller headers (at most 16 KiB and 100 headers)" },
	[AE_METHOD_NOT_ALLOWED] = { "method_not_allowed", 405, "unimplemented",
		"use the method api/API.md gives for this path" },
	[AE_UNSUPPORTED_MEDIA_TYPE] = { "invalid_input", 415, "invalid_argument",
		"send Content-Type: application/json (unary) or application/connect+json (streams)" },
	[AE_CONFLICT] = { "conflict", 409, "already_exists",
		"pick another id, or delete the existing object first" },
	[AE_DELETED_STARTING] = { "conflict", 409, "aborted",
		"the sandbox was deleted (DELETE, or E2B's kill) before it was ready: create another if it "
		"is still wanted" },
	[AE_SANDBOX_NOT_RUNNING] = { "sandbox_not_running", 409, "failed_precondition",
		"resume the sandbox (POST /v1/resume) or create a new one" },
	[AE_LIMIT_EXCEEDED] = { "quota_exceeded", 429, "resource_exhausted",
		"delete sandboxes you no longer need, or ask for fewer" },
	[AE_UNAVAILABLE] = { "unavailable", 503, "unavailable",
		"retry in a moment: the message says what was not ready (a server shutting down, a template "
		"still being built, a sandbox's own server)" },
	[AE_NODE_DRAINING] = { "node_draining", 503, "unavailable",
		"create the sandbox on another node; a cluster router retries there by itself" },
	[AE_UNIMPLEMENTED] = { "unimplemented", 501, "unimplemented",
		"this endpoint is not available in this version; see api/STATUS.md" },
	[AE_HTTP_VERSION] = { "http_version_not_supported", 505, "unimplemented",
		"bidirectional streams (Exec, RunCode, PortForward) take HTTP/2 without TLS (h2c, prior "
		"knowledge); the WebSocket Exec and previews take HTTP/1.1" },
	[AE_INTERNAL] = { "internal", 500, "internal",
		"retry; if it persists, report it with the server's log" },
};

/* A failure nobody classified is the server's own. */
static const struct err_info *info(enum api_err e)
{
	return &infos[e == AE_NONE ? AE_INTERNAL : e];
}

const char *api_err_code(enum api_err e) { return info(e)->code; }
int api_err_status(enum api_err e) { return info(e)->status; }
const char *api_err_connect_code(enum api_err e) { return info(e)->connect; }
const char *api_err_remediation(enum api_err e) { return info(e)->remediation; }

int api_fail(struct mitos_err *e, int code, enum api_err kind, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mitos_err_vset(e, code, fmt, ap);
	va_end(ap);
	if (e)
		e->kind = kind;
	return code;
}

static char *redact_token;

void api_redact_set_token(const char *token)
{
	free(redact_token);
	redact_token = token && *token ? strdup(token) : NULL;
}

static const char REDACTED[] = "[REDACTED]";

/* serve's own words after "bearer" in its messages ("requires a bearer token", "send
 * Authorization: Bearer <token>"): no credential, and redacting them garbled the
 * message that tells a client what to send. */
static bool placeholder(const char *p, size_t n)
{
	static const char *const words[] = { "token", "<token>" };
	for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
		size_t k = strlen(words[w]);
		if (n >= k && !strncasecmp(p, words[w], k) &&
		    (n == k || strchr(" .,;:)\"'\r\n", p[k])))
			return true;
	}
	return false;
}

char *api_redact(const char *s)
{
	if (!s)
		return NULL;
	size_t n = strlen(s), tl = redact_token ? strlen(redact_token) : 0;
	/* Output never grows by more than REDACTED per input byte replaced run. */
	char *out = malloc(n * (sizeof(REDACTED)) + 1);
	if (!out)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		if (tl && n - i >= tl && !memcmp(s + i, redact_token, tl)) {
			memcpy(out + o, REDACTED, sizeof(REDACTED) - 1);
			o += sizeof(REDACTED) - 1;
			i += tl;
			continue;
		}
		if (n - i >= 7 && !strncasecmp(s + i, "bearer ", 7)) {
			memcpy(out + o, s + i, 7);
			o += 7;
			i += 7;
			while (i < n && s[i] == ' ')
				i++;
			if (i < n && s[i] != '"' && s[i] != '\'' && !placeholder(s + i, n - i)) {
				memcpy(out + o, REDACTED, sizeof(REDACTED) - 1);
				o += sizeof(REDACTED) - 1;
				while (i < n && s[i] != ' ' && s[i] != '"' && s[i] != '\'' && s[i] != ',' &&
				       s[i] != '\r' && s[i] != '\n')
					i++;
			}
			continue;
		}
		out[o++] = s[i++];
	}
	out[o] = 0;
	return out;
}

static void add_redacted(cJSON *obj, const char *key, const char *val)
{
	char *r = api_redact(val ? val : "");
	cJSON_AddStringToObject(obj, key, r ? r : "");
	free(r);
}

cJSON *api_error_object(enum api_err e, const char *message, const char *cause,
			const char *remediation, int connect_style)
{
	const struct err_info *in = info(e);
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	if (connect_style) {
		cJSON_AddStringToObject(o, "code", in->connect);
		cJSON_AddStringToObject(o, "mitos_code", in->code);
	} else {
		cJSON_AddStringToObject(o, "code", in->code);
	}
	add_redacted(o, "message", message ? message : in->code);
	add_redacted(o, "cause", cause ? cause : "");
	add_redacted(o, "remediation", remediation ? remediation : in->remediation);
	return o;
}

char *api_error_json(enum api_err e, const char *message, const char *cause, const char *remediation)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *o = api_error_object(e, message, cause, remediation, 0);
	if (!root || !o) {
		cJSON_Delete(root);
		cJSON_Delete(o);
		return NULL;
	}
	cJSON_AddItemToObject(root, "error", o);
	char *s = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	return s;
}

static bool id_char(char c, bool first)
{
	if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
		return true;
	return !first && (c == '_' || c == '-');
}

int api_valid_id(const char *id)
{
	if (!id || !*id)
		return 0;
	size_t i = 0;
	for (; id[i]; i++)
		if (i >= 64 || !id_char(id[i], i == 0))
			return 0;
	return 1;
}
