/* The preview proxy. Every proxied request gets its own forward stream (one TCP
 * connection inside the sandbox): the request head is rebuilt for the upstream
 * (our token removed, hop-by-hop headers dropped, "Connection: close"), the body
 * streamed after it; the response is relayed byte for byte after its head (so
 * chunked bodies, SSE and anything else stream through unchanged), and the client
 * connection closes when the upstream does. An upgrade request (WebSocket) keeps
 * relaying both ways after the upstream's 101. Bytes are credited to the agent
 * only as the client takes them, and read from the client only as the agent
 * takes them. */
#include "api/proxy/preview.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proto.h"
#include "api/sandbox/agent_call.h"
#include "api/sandbox/agent_client.h"
#include "api/e2b/e2b.h"
#include "api/http/bytebuf.h"
#include "api/http/errors.h"
#include "api/mitos/handlers.h"
#include "api/http/http.h"
#include "api/proxy/preview_token.h"
#include "api/sandbox/registry.h"
#include "api/http/router.h"
#include "api/sandbox/sandboxes.h"
#include "api/http/server.h"

#define PV_HEAD_MAX (16u << 10)
#define PV_TX_HIGH (1u << 20)       /* client bytes waiting for agent credit: stop reading */
#define PV_TTL_DEFAULT 3600u
#define PV_TTL_MAX (7u * 86400u)
#define PV_PREFIX "/preview/"

struct pv {
	struct http_req *r;
	struct astream *as;
	char sid[ID_MAX + 1];
	unsigned port;
	bool connected, upgrade, chunked_in, set_cookie, head_done, fin_sent;
	uint64_t instance; /* of the sandbox the token was made for */
	char token[PREVIEW_TOKEN_MAX];
	uint64_t expires_s;
	char cookie_path[ID_MAX + 40];
	char host_mask[E2B_MASK_HOST_MAX + 1]; /* the Host the upstream gets instead of the client's, or "" */
	struct bytebuf head;  /* the upstream's response head, until complete */
	struct bytebuf tx;    /* bytes for the upstream waiting for credit */
};

int preview_init(const char *state_dir, struct mitos_err *e)
{
	return preview_key_load(state_dir, e);
}

void preview_exit(void)
{
	preview_key_wipe();
}

/* ---- small helpers ---- */

/* Does the comma-separated header value list hold token (case-insensitive)? */
static bool list_has(const char *v, const char *token)
{
	size_t tl = strlen(token);
	while (v && *v) {
		while (*v == ' ' || *v == '\t' || *v == ',')
			v++;
		size_t n = strcspn(v, ",");
		size_t k = n;
		while (k && (v[k - 1] == ' ' || v[k - 1] == '\t'))
			k--;
		if (k == tl && !strncasecmp(v, token, tl))
			return true;
		v += n;
	}
	return false;
}

/* "<id>-<port>" from a host label; the id is everything before the last '-'. */
static int parse_label(const char *label, size_t n, char *id, unsigned *port)
{
	const char *dash = NULL;
	for (size_t i = 0; i < n; i++)
		if (label[i] == '-')
			dash = label + i;
	if (!dash || dash == label || (size_t)(dash - label) > ID_MAX)
		return -EINVAL;
	size_t dl = (size_t)(label + n - dash - 1);
	if (!dl || dl > 5)
		return -EINVAL;
	unsigned p = 0;
	for (size_t i = 0; i < dl; i++) {
		if (!isdigit((unsigned char)dash[1 + i]))
			return -EINVAL;
		p = p * 10 + (unsigned)(dash[1 + i] - '0');
	}
	if (!p || p > 65535)
		return -EINVAL;
	memcpy(id, label, (size_t)(dash - label));
	id[dash - label] = 0;
	*port = p;
	return api_valid_id(id) ? 0 : -EINVAL;
}

static struct sandbox *find_sandbox(const char *id)
{
	struct sandbox *sb = sandbox_find(id);
	for (struct sandbox *s = sandboxes_first(); s && !sb; s = s->next)
		if (!strcasecmp(s->id, id))
			sb = s;
	return sb;
}

/* "<port>-<id>": the host E2B's getHost(port) builds. */
static int parse_e2b_label(const char *label, size_t n, char *id, unsigned *port)
{
	size_t pl = 0;
	unsigned p = 0;
	while (pl < n && pl < 6 && isdigit((unsigned char)label[pl]))
		p = p * 10 + (unsigned)(label[pl++] - '0');
	if (!pl || pl > 5 || pl + 1 >= n || label[pl] != '-' || !p || p > 65535 || n - pl - 1 > ID_MAX)
		return -EINVAL;
	memcpy(id, label + pl + 1, n - pl - 1);
	id[n - pl - 1] = 0;
	*port = p;
	return api_valid_id(id) ? 0 : -EINVAL;
}

/* The Host header without its port, and the length of that. */
static const char *host_name(const struct http_req *r, size_t *n)
{
	const char *h = http_req_header(r, "host");
	if (!h)
		return NULL;
	const char *colon = strrchr(h, ':');
	*n = colon && !strchr(h, ']') ? (size_t)(colon - h) : strlen(h);
	while (*n && h[*n - 1] == '.')
		(*n)--;
	return h;
}

/* Length of the preview label when the Host is <label>.<domain>, else 0. */
static size_t host_label_len(const struct http_req *r)
{
	const char *dom = srv_cfg.preview_domain;
	size_t hl, dl = dom ? strlen(dom) : 0;
	const char *h = dl ? host_name(r, &hl) : NULL;
	if (!h || hl < dl + 2 || h[hl - dl - 1] != '.' || strncasecmp(h + hl - dl, dom, dl))
		return 0;
	size_t ll = hl - dl - 1;
	return memchr(h, '.', ll) ? 0 : ll;
}

int preview_host_target(const struct http_req *r, char *id, unsigned *port, bool *e2b)
{
	size_t ll = host_label_len(r);
	const char *h = http_req_header(r, "host");
	char eid[ID_MAX + 1];
	unsigned eport;
	if (!ll)
		return -EINVAL;
	bool ours = !parse_label(h, ll, id, port), theirs = !parse_e2b_label(h, ll, eid, &eport);
	/* Both forms can fit one label: the one that names a sandbox wins, ours first. */
	*e2b = theirs && (!ours || (!find_sandbox(id) && find_sandbox(eid)));
	if (*e2b) {
		memcpy(id, eid, sizeof(eid));
		*port = eport;
	}
	return ours || theirs ? 0 : -EINVAL;
}

bool preview_host_matches(const struct http_req *r)
{
	return host_label_len(r) > 0;
}

/* The sandbox with this id; hosts arrive lower-cased, so that is tried too. */

/* ---- POST /v1/preview ---- */

void rest_preview_create(struct http_req *r)
{
	cJSON *b = handler_json_body(r);
	if (!b)
		return;
	/* The contract's {sandbox, port}; "ttl" (seconds) is this server's addition. */
	const cJSON *jid = cJSON_GetObjectItemCaseSensitive(b, "sandbox");
	const char *id = cJSON_IsString(jid) ? jid->valuestring : NULL;
	const cJSON *jport = cJSON_GetObjectItemCaseSensitive(b, "port");
	const cJSON *jttl = cJSON_GetObjectItemCaseSensitive(b, "ttl");
	if (!id || !api_valid_id(id)) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INVALID_SANDBOX_ID, id ? "sandbox is not a valid sandbox id"
						      : "sandbox is required", NULL, NULL);
		return;
	}
	double port = cJSON_IsNumber(jport) ? jport->valuedouble : -1;
	double ttl = jttl ? (cJSON_IsNumber(jttl) ? jttl->valuedouble : -1) : PV_TTL_DEFAULT;
	if (port < 1 || port > 65535 || port != (double)(unsigned)port) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INVALID_ARGUMENT, "port must be a whole number from 1 to 65535", NULL, NULL);
		return;
	}
	if (ttl < 1 || ttl > PV_TTL_MAX || ttl != (double)(unsigned)ttl) {
		cJSON_Delete(b);
		http_reply_error(r, AE_INVALID_ARGUMENT, "ttl must be a whole number of seconds from 1 to 604800",
				 NULL, NULL);
		return;
	}
	struct sandbox *sb = sandbox_find(id);
	char msg[160];
	if (!sb) {
		snprintf(msg, sizeof(msg), "sandbox \"%.64s\" not found", id);
		cJSON_Delete(b);
		http_reply_error(r, AE_NOT_FOUND, msg, NULL, NULL);
		return;
	}
	cJSON_Delete(b);
	unsigned p = (unsigned)port;
	uint64_t exp = ur_wall_ms() / 1000 + (uint64_t)ttl;
	char token[PREVIEW_TOKEN_MAX];
	preview_token_make(sb->id, sb->created_ms, p, exp, token);

	/* The path URL names this server as the client reached it. */
	const char *host = http_req_header(r, "host");
	char hostbuf[300];
	if (!host || !*host || strlen(host) > 255 || strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
							   "0123456789.-:[]") != strlen(host)) {
		snprintf(hostbuf, sizeof(hostbuf), strchr(srv_cfg.listen_host, ':') ? "[%s]:%u" : "%s:%u",
			 srv_cfg.listen_host, srv_cfg.listen_port);
		host = hostbuf;
	}
	char url[800], path_url[800], ts[40];
	snprintf(path_url, sizeof(path_url), "http://%s" PV_PREFIX "%s/%u/?" PREVIEW_QUERY_PARAM "=%s", host, sb->id,
		 p, token);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "sandbox", sb->id);
	cJSON_AddNumberToObject(o, "port", p);
	cJSON_AddStringToObject(o, "token", token);
	if (srv_cfg.preview_domain) {
		const char *colon = strrchr(host, ':');
		snprintf(url, sizeof(url), "http://%s-%u.%s%s/?" PREVIEW_QUERY_PARAM "=%s", sb->id, p,
			 srv_cfg.preview_domain, colon && !strchr(colon, ']') ? colon : "", token);
		cJSON_AddStringToObject(o, "url", url);
		cJSON_AddStringToObject(o, "host_url", url);
	} else {
		cJSON_AddStringToObject(o, "url", path_url);
	}
	if (srv_cfg.preview_paths)
		cJSON_AddStringToObject(o, "path_url", path_url);
	cJSON_AddNumberToObject(o, "expires_unix", (double)exp);
	registry_rfc3339(exp * 1000, ts, sizeof(ts));
	cJSON_AddStringToObject(o, "expires_at", ts);
	handler_reply_cjson(r, 200, o);
}

/* ---- the proxy ---- */

static void pv_tx_pump(struct pv *pv);

static void pv_free(struct pv *pv)
{
	agent_bridge_release(&pv->r, &pv->as);
	bytebuf_free(&pv->head);
	bytebuf_free(&pv->tx);
	explicit_bzero(pv->token, sizeof(pv->token));
	free(pv);
}

/* Ends the exchange: an error answer if nothing was relayed yet, else the close
 * that tells the client the response is complete. */
static void pv_end(struct pv *pv, int status, enum api_err e, const char *msg, const char *cause)
{
	struct http_req *r = pv->r;
	if (r) {
		/* 502s are about the server in the sandbox, not about this one. */
		const char *fix = status == 502 && e == AE_UNAVAILABLE
			? "check the server inside the sandbox: it must listen on 127.0.0.1 (or 0.0.0.0) at this "
			  "port and answer HTTP/1.x" : NULL;
		if (!r->resp_started && msg)
			http_reply_error_status(r, status, e, msg, cause, fix);
		else if (!r->resp_started)
			http_reply_error_status(r, 502, AE_UNAVAILABLE, "the preview's server closed the connection "
						"without answering", NULL, fix);
		else
			http_raw_finish(r);
	}
	pv_free(pv);
}

static void pv_abort(struct http_req *r)
{
	struct pv *pv = r->ctx;
	pv->r = NULL;
	pv_free(pv);
}

static void pv_writable(struct http_req *r)
{
	struct pv *pv = r->ctx;
	if (pv->as)
		agent_room_changed(pv->as);
}

static void pv_client_bytes(struct pv *pv, const uint8_t *p, size_t n)
{
	if (bytebuf_add(&pv->tx, p, n)) {
		pv_end(pv, 500, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	if (bytebuf_pending(&pv->tx) > PV_TX_HIGH)
		http_req_pause_body(pv->r);
	pv_tx_pump(pv);
}

static void pv_body(struct http_req *r, const uint8_t *p, size_t n)
{
	struct pv *pv = r->ctx;
	if (!pv->chunked_in) {
		pv_client_bytes(pv, p, n);
		return;
	}
	/* http_parser took the client's chunking apart; the upstream gets our own. */
	char h[24];
	int k = snprintf(h, sizeof(h), "%zx\r\n", n);
	if (bytebuf_add(&pv->tx, h, (size_t)k)) {
		pv_end(pv, 500, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	if (bytebuf_add(&pv->tx, p, n) || bytebuf_add(&pv->tx, "\r\n", 2)) {
		pv_end(pv, 500, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	pv_client_bytes(pv, NULL, 0);
}

static void pv_body_end(struct http_req *r)
{
	struct pv *pv = r->ctx;
	if (pv->chunked_in && bytebuf_str(&pv->tx, "0\r\n\r\n")) {
		pv_end(pv, 500, AE_INTERNAL, "out of memory", NULL);
		return;
	}
	if (pv->upgrade)
		http_raw_input(r);
	pv_tx_pump(pv);
}

static void pv_raw(struct http_req *r, const uint8_t *p, size_t n)
{
	pv_client_bytes(r->ctx, p, n);
}

static const struct http_req_ops pv_ops = { .body = pv_body, .body_end = pv_body_end, .writable = pv_writable,
					    .abort = pv_abort, .raw = pv_raw };

static void pv_tx_pump(struct pv *pv)
{
	if (!pv->as || !pv->connected)
		return;
	agent_send_buffered(pv->as, PROTO_CH_MAIN, &pv->tx, false);
	if (pv->r && pv->r->body_paused && bytebuf_pending(&pv->tx) < PV_TX_HIGH / 4)
		http_req_resume_body(pv->r);
}

static bool header_is(const char *line, size_t n, const char *name)
{
	size_t k = strlen(name);
	return n > k && line[k] == ':' && !strncasecmp(line, name, k);
}

/* Header lines of a response head that go to the client: hop-by-hop ones are ours to
 * set, except on a 101 where they carry the upgrade; a Content-Length beside a
 * Transfer-Encoding goes (RFC 9112 6.3: an intermediary removes it). */
static bool resp_header_dropped(const char *line, size_t n, bool upgrade101, bool chunked)
{
	static const char *const drop[] = { "connection", "keep-alive", "proxy-connection" };
	if (upgrade101)
		return false;
	for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
		if (header_is(line, n, drop[i]))
			return true;
	return chunked && header_is(line, n, "content-length");
}

/* The upstream's head read as a proxy in front of serve will read it, with one framing
 * only: lines end in CRLF, none is folded, names are tokens, a Content-Length has one
 * value however often it is given, a Transfer-Encoding ends in chunked (*chunked).
 * NULL, or what is wrong. */
static const char *head_refusal(const char *s, const char *end, bool *chunked)
{
	char cl[24] = "";
	*chunked = false;
	for (const char *l = s; l < end;) {
		const char *nl = memchr(l, '\n', (size_t)(end - l));
		size_t len = nl ? (size_t)(nl - l) : (size_t)(end - l);
		if (!nl || !len || l[len - 1] != '\r')
			return "a line of its head does not end in CRLF";
		len--;
		if (l != s) {
			const char *colon = memchr(l, ':', len);
			size_t k = 0;
			while (colon && l + k < colon && (isalnum((unsigned char)l[k]) || strchr("!#$%&'*+-.^_`|~", l[k])))
				k++;
			if (!colon || !k || l + k != colon)
				return "a header of its head is folded or its name is not a token";
			const char *v = colon + 1, *ve = l + len;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			size_t vn = (size_t)(ve - v);
			if (header_is(l, len, "content-length")) {
				if (!vn || vn >= sizeof(cl) || strspn(v, "0123456789") < vn || (cl[0] && strncmp(cl, v, vn)))
					return "its Content-Length is not one number";
				memcpy(cl, v, vn);
				cl[vn] = 0;
			} else if (header_is(l, len, "transfer-encoding")) {
				*chunked = vn >= 7 && !strncasecmp(ve - 7, "chunked", 7) && (vn == 7 || strchr(", \t", ve[-8]));
				if (!*chunked)
					return "its Transfer-Encoding does not end in chunked";
			}
		}
		l += len + 2;
	}
	return NULL;
}

/* A Set-Cookie line without its Domain attribute: the cookie stays with the host that
 * set it. Sandboxes share the preview domain (<id>-<port>.D); one that set a cookie for
 * all of D would send it to every other sandbox's pages in the client's browser
 * (cookie tossing, a cookie bomb that makes every preview a 431). */
static int add_host_only_cookie(struct bytebuf *out, const char *line, size_t len)
{
	const char *end = line + len - 2; /* CRLF */
	const char *a = memchr(line, ';', (size_t)(end - line));
	int rc = bytebuf_add(out, line, (size_t)((a ? a : end) - line));
	while (!rc && a) {
		const char *next = memchr(a + 1, ';', (size_t)(end - a - 1));
		const char *name = a + 1;
		while (name < end && (*name == ' ' || *name == '\t'))
			name++;
		size_t alen = (size_t)((next ? next : end) - a);
		if (!((size_t)(end - name) >= 6 && !strncasecmp(name, "domain", 6) &&
		      (name + 6 == end || name[6] == '=' || name[6] == ' ' || name[6] == ';' || name[6] == '\t')))
			rc = bytebuf_add(out, a, alen);
		a = next;
	}
	return rc ? rc : bytebuf_str(out, "\r\n");
}

/* Sends the complete response head h[0..n) (ending in CRLF CRLF, checked) to the client. */
static int pv_send_head(struct pv *pv, const uint8_t *h, size_t n, int status, bool chunked)
{
	struct http_req *r = pv->r;
	bool is101 = status == 101;
	const char *s = (const char *)h;
	const char *end = s + n - 2; /* the last CRLF ends the head */
	struct bytebuf out = { 0 };
	const char *eol = memchr(s, '\n', (size_t)(end - s));
	int rc = bytebuf_add(&out, s, (size_t)(eol - s + 1));
	for (const char *l = eol + 1; !rc && l < end;) {
		const char *nl = memchr(l, '\n', (size_t)(end - l));
		size_t len = (size_t)(nl - l + 1);
		if (header_is(l, len, "set-cookie"))
			rc = add_host_only_cookie(&out, l, len);
		else if (!resp_header_dropped(l, len, is101, chunked))
			rc = bytebuf_add(&out, l, len);
		l += len;
	}
	if (!rc && !is101)
		rc = bytebuf_str(&out, "Connection: close\r\n");
	if (!rc && pv->set_cookie && !is101) {
		char c[400];
		uint64_t now = ur_wall_ms() / 1000;
		snprintf(c, sizeof(c), "Set-Cookie: " PREVIEW_COOKIE "=%s; Path=%s; Max-Age=%llu; HttpOnly; "
			 "SameSite=Lax\r\n", pv->token, pv->cookie_path,
			 (unsigned long long)(pv->expires_s > now ? pv->expires_s - now : 0));
		rc = bytebuf_str(&out, c);
		pv->set_cookie = false;
	}
	if (!rc)
		rc = bytebuf_str(&out, "\r\n");
	if (!rc) {
		http_raw_begin(r);
		http_raw_write(r, out.p, out.len);
	}
	bytebuf_free(&out);
	return rc;
}

/* Upstream bytes before the end of the response head. Returns -1 when pv is gone. */
static int pv_head_bytes(struct pv *pv, const uint8_t *p, size_t n)
{
	if (bytebuf_add(&pv->head, p, n)) {
		pv_end(pv, 500, AE_INTERNAL, "out of memory", NULL);
		return -1;
	}
	for (;;) {
		const uint8_t *h = pv->head.p + pv->head.off;
		size_t hn = bytebuf_pending(&pv->head);
		const uint8_t *e = hn >= 4 ? memmem(h, hn, "\r\n\r\n", 4) : NULL;
		if (!e) {
			if (hn > PV_HEAD_MAX) {
				pv_end(pv, 502, AE_UNAVAILABLE, "the preview's server sent a response head over 16 KiB",
				       NULL);
				return -1;
			}
			return 0;
		}
		size_t headlen = (size_t)(e - h) + 4;
		int status = 0;
		if (headlen < 14 || memcmp(h, "HTTP/1.", 7) || !isdigit(h[7]) || h[8] != ' ' ||
		    sscanf((const char *)h + 9, "%3d", &status) != 1 || status < 100 || status > 999) {
			pv_end(pv, 502, AE_UNAVAILABLE, "the preview's server did not answer with HTTP/1.x", NULL);
			return -1;
		}
		bool chunked;
		const char *why = head_refusal((const char *)h, (const char *)h + headlen - 2, &chunked);
		if (why) {
			char msg[160];
			snprintf(msg, sizeof(msg), "the preview's server sent a head a proxy could read two ways: %s", why);
			pv_end(pv, 502, AE_UNAVAILABLE, msg, NULL);
			return -1;
		}
		if (status < 200 && status != 101) {
			/* Interim answers (103 Early Hints...) go through as they are. */
			http_raw_begin(pv->r);
			http_raw_write(pv->r, h, headlen);
			pv->head.off += headlen;
			continue;
		}
		if (pv_send_head(pv, h, headlen, status, chunked)) {
			pv_end(pv, 500, AE_INTERNAL, "out of memory", NULL);
			return -1;
		}
		pv->head_done = true;
		if (hn > headlen)
			http_raw_write(pv->r, h + headlen, hn - headlen);
		bytebuf_free(&pv->head);
		return 0;
	}
}

static void as_data(struct astream *s, uint8_t ch, bool fin, const uint8_t *p, size_t n)
{
	struct pv *pv = s->ctx;
	(void)ch;
	if (n) {
		if (!pv->head_done) {
			if (pv_head_bytes(pv, p, n))
				return;
		} else {
			http_raw_write(pv->r, p, n);
		}
	}
	if (fin)
		pv_end(pv, 502, AE_UNAVAILABLE, NULL, NULL);
}

static void as_event(struct astream *s, cJSON *ev)
{
	struct pv *pv = s->ctx;
	if (!cJSON_IsTrue(cJSON_GetObjectItem(ev, "connected")) || pv->connected)
		return;
	pv->connected = true;
	pv_tx_pump(pv);
}

static void as_end(struct astream *s, cJSON *payload, const char *why)
{
	struct pv *pv = s->ctx;
	pv->as = NULL;
	char msg[200];
	if (!payload) {
		snprintf(msg, sizeof(msg), "sandbox %s stopped", pv->sid);
		pv_end(pv, 502, AE_SANDBOX_NOT_RUNNING, msg, why);
		return;
	}
	const cJSON *err = cJSON_GetObjectItem(payload, "error");
	const char *code = cJSON_GetStringValue(cJSON_GetObjectItem(err, "code"));
	if (code && !strcmp(code, "connection_refused")) {
		snprintf(msg, sizeof(msg), "nothing listens on port %u in sandbox %s", pv->port, pv->sid);
		pv_end(pv, 502, AE_UNAVAILABLE, msg, "agent: connection_refused");
		return;
	}
	if (code) {
		char cause[80];
		snprintf(cause, sizeof(cause), "agent: %.60s", code);
		snprintf(msg, sizeof(msg), "cannot reach port %u in sandbox %s", pv->port, pv->sid);
		pv_end(pv, 502, AE_UNAVAILABLE, msg, cause);
		return;
	}
	pv_end(pv, 502, AE_UNAVAILABLE, NULL, NULL);
}

static void as_writable(struct astream *s)
{
	pv_tx_pump(s->ctx);
}

/* The upstream's bytes are credited back as the client takes them. */
static size_t as_room(struct astream *s)
{
	struct pv *pv = s->ctx;
	return pv->r ? http_stream_room(pv->r) : SIZE_MAX;
}

static const struct astream_ops pv_stream_ops = { as_data, as_event, as_end, as_writable, as_room };

/* The query without our token parameter (malloc'd, possibly empty). */
static char *query_without_token(const char *q)
{
	char *out = malloc(strlen(q) + 1);
	if (!out)
		return NULL;
	size_t o = 0, kl = strlen(PREVIEW_QUERY_PARAM);
	while (*q) {
		size_t n = strcspn(q, "&");
		if (!(n >= kl && !strncmp(q, PREVIEW_QUERY_PARAM, kl) && (n == kl || q[kl] == '=')) && n) {
			if (o)
				out[o++] = '&';
			memcpy(out + o, q, n);
			o += n;
		}
		q += n;
		if (*q == '&')
			q++;
	}
	out[o] = 0;
	return out;
}

/* A Cookie header value without our cookie; NULL when nothing is left. */
static char *cookies_without_ours(const char *v)
{
	char *out = malloc(strlen(v) + 1);
	if (!out)
		return NULL;
	size_t o = 0, cl = strlen(PREVIEW_COOKIE);
	while (*v) {
		while (*v == ' ' || *v == ';')
			v++;
		size_t n = strcspn(v, ";");
		if (n && !(n > cl && !strncmp(v, PREVIEW_COOKIE, cl) && v[cl] == '=')) {
			if (o) {
				out[o++] = ';';
				out[o++] = ' ';
			}
			memcpy(out + o, v, n);
			o += n;
		}
		v += n;
	}
	out[o] = 0;
	if (!o) {
		free(out);
		return NULL;
	}
	return out;
}

/* Checks the token from the query, else every cookie of ours. */
static int check_token(struct pv *pv, const struct http_req *r, const char *sid)
{
	uint64_t now = ur_wall_ms() / 1000;
	char *qt = http_query_get(r->query, PREVIEW_QUERY_PARAM);
	int rc = -EACCES;
	if (qt) {
		rc = preview_token_check(sid, pv->port, qt, now, &pv->expires_s, &pv->instance);
		if (!rc && strlen(qt) < sizeof(pv->token)) {
			snprintf(pv->token, sizeof(pv->token), "%s", qt);
			pv->set_cookie = true;
		}
		explicit_bzero(qt, strlen(qt));
		free(qt);
		return rc;
	}
	size_t cl = strlen(PREVIEW_COOKIE);
	for (unsigned i = 0; i < r->nh && rc; i++) {
		if (strcmp(r->h[i].name, "cookie"))
			continue;
		for (const char *v = r->h[i].value; *v && rc;) {
			while (*v == ' ' || *v == ';')
				v++;
			size_t n = strcspn(v, ";");
			if (n > cl && !strncmp(v, PREVIEW_COOKIE, cl) && v[cl] == '=' && n - cl - 1 < PREVIEW_TOKEN_MAX) {
				char t[PREVIEW_TOKEN_MAX];
				memcpy(t, v + cl + 1, n - cl - 1);
				t[n - cl - 1] = 0;
				uint64_t inst = 0;
				int k = preview_token_check(sid, pv->port, t, now, &pv->expires_s, &inst);
				/* An expired cookie must not hide a valid one; report expiry
				 * only if nothing better turns up. */
				if (k == 0 || rc == -EACCES) {
					rc = k;
					pv->instance = inst;
				}
			}
			v += n;
		}
	}
	return rc;
}

static bool carries_node_token(const char *value)
{
	return srv_cfg.token && *srv_cfg.token && strstr(value, srv_cfg.token);
}

static bool hop_by_hop(const char *name, const char *connection)
{
	static const char *const hop[] = { "connection", "keep-alive", "proxy-connection", "proxy-authorization",
					   "te", "trailer",
					   "transfer-encoding", "upgrade", "expect", "content-length", "host",
					   "cookie", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix",
					   /* E2B's tokens are the client's to serve, never the sandbox's */
					   "e2b-traffic-access-token", "x-access-token" };
	for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
		if (!strcmp(name, hop[i]))
			return true;
	return connection && list_has(connection, name);
}

static int build_request(struct pv *pv, struct http_req *r, const char *path, const char *prefix)
{
	struct bytebuf *b = &pv->tx;
	const char *connection = http_req_header(r, "connection");
	const char *upgrade = http_req_header(r, "upgrade");
	const char *te = http_req_header(r, "transfer-encoding");
	pv->upgrade = upgrade && connection && list_has(connection, "upgrade");
	pv->chunked_in = te && list_has(te, "chunked");
	char *q = query_without_token(r->query);
	if (!q)
		return -ENOMEM;
	int rc = bytebuf_str(b, http_method_str((enum http_method)r->method));
	rc = rc ?: bytebuf_str(b, " ");
	rc = rc ?: bytebuf_str(b, *path ? path : "/");
	if (*q) {
		rc = rc ?: bytebuf_str(b, "?");
		rc = rc ?: bytebuf_str(b, q);
	}
	free(q);
	rc = rc ?: bytebuf_str(b, " HTTP/1.1\r\n");
	const char *host = http_req_header(r, "host");
	if (host) {
		rc = rc ?: bytebuf_str(b, "Host: ");
		rc = rc ?: bytebuf_str(b, pv->host_mask[0] ? pv->host_mask : host);
		rc = rc ?: bytebuf_str(b, "\r\nX-Forwarded-Host: ");
		rc = rc ?: bytebuf_str(b, host);
		rc = rc ?: bytebuf_str(b, "\r\n");
	}
	/* The node's own bearer token never reaches a sandbox, in whatever header and form
	 * it comes (a tab after Bearer, a list, a second Authorization, bare, proxy). */
	for (unsigned i = 0; i < r->nh && !rc; i++) {
		const char *name = r->h[i].name, *v = r->h[i].value;
		if (hop_by_hop(name, connection) || carries_node_token(v))
			continue;
		rc = bytebuf_str(b, name);
		rc = rc ?: bytebuf_str(b, ": ");
		rc = rc ?: bytebuf_str(b, v);
		rc = rc ?: bytebuf_str(b, "\r\n");
	}
	for (unsigned i = 0; i < r->nh && !rc; i++) {
		if (strcmp(r->h[i].name, "cookie") || carries_node_token(r->h[i].value))
			continue;
		char *c = cookies_without_ours(r->h[i].value);
		if (c) {
			rc = bytebuf_str(b, "Cookie: ");
			rc = rc ?: bytebuf_str(b, c);
			rc = rc ?: bytebuf_str(b, "\r\n");
			free(c);
		}
	}
	char line[300];
	if (prefix) {
		snprintf(line, sizeof(line), "X-Forwarded-Prefix: %s\r\n", prefix);
		rc = rc ?: bytebuf_str(b, line);
	}
	rc = rc ?: bytebuf_str(b, "X-Forwarded-Proto: http\r\n");
	if (pv->upgrade) {
		rc = rc ?: bytebuf_str(b, "Connection: Upgrade\r\nUpgrade: ");
		rc = rc ?: bytebuf_str(b, upgrade);
		rc = rc ?: bytebuf_str(b, "\r\n");
	} else {
		rc = rc ?: bytebuf_str(b, "Connection: close\r\n");
	}
	if (pv->chunked_in) {
		rc = rc ?: bytebuf_str(b, "Transfer-Encoding: chunked\r\n");
	} else if (r->content_length != ULLONG_MAX) {
		snprintf(line, sizeof(line), "Content-Length: %llu\r\n", (unsigned long long)r->content_length);
		rc = rc ?: bytebuf_str(b, line);
	}
	rc = rc ?: bytebuf_str(b, "\r\n");
	return rc;
}

/* Opens the agent's forward stream to pv->port of sb and relays r over it: path
 * (with its query) is what the upstream is asked for, prefix (or NULL) where the
 * client sees it mounted. Takes pv. */
static void pv_start(struct pv *pv, struct http_req *r, struct sandbox *sb, const char *path, const char *prefix)
{
	char msg[160];
	if (sb->state != SB_RUNNING || !agent_conn_ready(sb->agent)) {
		pv_free(pv);
		snprintf(msg, sizeof(msg), "sandbox %s is %s", sb->id, sb->state == SB_PAUSED ? "paused"
				 : sb->state == SB_STARTING ? "starting" : "stopping");
		http_reply_error(r, AE_SANDBOX_NOT_RUNNING, msg, NULL, NULL);
		return;
	}
	if (!agent_relay_room(sb->agent)) {
		pv_free(pv);
		snprintf(msg, sizeof(msg), "sandbox %s relays as many connections as it may (%u): retry when some close",
			 sb->id, AGENT_RELAY_STREAMS_MAX);
		http_reply_error(r, AE_LIMIT_EXCEEDED, msg, NULL, NULL);
		return;
	}
	size_t qpos = strcspn(path, "?");
	char *p = strndup(path, qpos);
	if (!p || build_request(pv, r, p, prefix)) {
		free(p);
		pv_free(pv);
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	free(p);
	char open[64];
	snprintf(open, sizeof(open), "{\"op\":\"forward\",\"port\":%u}", pv->port);
	pv->as = agent_open(sb->agent, open, &pv_stream_ops, pv);
	if (!pv->as) {
		pv_free(pv);
		http_reply_error(r, AE_INTERNAL, "cannot open a stream to the sandbox's agent", NULL, NULL);
		return;
	}
	pv->r = r;
	r->ctx = pv;
	r->ops = &pv_ops;
	/* A client that leaves while it waits (for an upstream that never answers) gives
	 * its relay back, as a proxy's would: the stream counted against the sandbox's
	 * relays until serve's next write to it, which may never come. */
	r->abort_on_eof = true;
	/* Nothing of the body is read until the upstream connection exists. */
	http_req_pause_body(r);
}

void preview_proxy(struct http_req *r)
{
	struct pv *pv = calloc(1, sizeof(*pv));
	if (!pv) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	/* Where to: the Host names it, or the path does (/preview/<id>/<port>/rest,
	 * parsed from the URL as received so the rest reaches the upstream as sent). */
	char id[ID_MAX + 1];
	const char *path = NULL;
	char prefix[ID_MAX + 32];
	bool by_host = false, e2b_host = false;
	if (host_label_len(r)) {
		by_host = true;
		if (preview_host_target(r, id, &pv->port, &e2b_host))
			goto not_found;
		path = r->arena;
		snprintf(pv->cookie_path, sizeof(pv->cookie_path), "/");
	} else {
		const char *u = r->arena;
		if (strncmp(u, PV_PREFIX, strlen(PV_PREFIX)))
			goto not_found;
		if (!srv_cfg.preview_paths) {
			pv_free(pv);
			http_reply_error(r, AE_NOT_FOUND, "previews by path are off on this node: each sandbox's "
					 "previews have an origin of their own, http://<id>-<port>.<preview domain>/",
					 NULL, "use the url POST /v1/preview answers (serve --preview-paths serves "
					 "the shared-origin path form too)");
			return;
		}
		u += strlen(PV_PREFIX);
		size_t il = strcspn(u, "/?");
		if (!il || il > ID_MAX || u[il] != '/')
			goto not_found;
		memcpy(id, u, il);
		id[il] = 0;
		u += il + 1;
		size_t pl = strspn(u, "0123456789");
		if (!pl || pl > 5 || (u[pl] && u[pl] != '/' && u[pl] != '?') || !api_valid_id(id))
			goto not_found;
		pv->port = (unsigned)strtoul(u, NULL, 10);
		if (!pv->port || pv->port > 65535)
			goto not_found;
		path = u + pl;
	}
	struct sandbox *sb = find_sandbox(id);
	const char *sid = sb ? sb->id : id;
	snprintf(pv->sid, sizeof(pv->sid), "%s", sid);
	if (!by_host) {
		snprintf(prefix, sizeof(prefix), PV_PREFIX "%.64s/%u", sid, pv->port);
		snprintf(pv->cookie_path, sizeof(pv->cookie_path), "%s/", prefix);
	}
	if (e2b_host) {
		/* E2B's getHost() URLs carry no token of ours: a sandbox created with public
		 * traffic (E2B's default) takes none; else its E2B traffic token (when it has
		 * one) or the API key decides, as for its interpreter. */
		enum e2b_host_verdict v = sb ? e2b_host_admit(r, sb->id, pv->port, pv->host_mask, sizeof(pv->host_mask))
					     : E2B_HOST_NOT_FOUND;
		if (v != E2B_HOST_ADMITTED) {
			bool known = v == E2B_HOST_FORBIDDEN;
			pv_free(pv);
			http_reply_error(r, known ? AE_FORBIDDEN : AE_NOT_FOUND,
					 known ? "this sandbox's URLs need its traffic access token (it was created with "
						 "network.allowPublicTraffic false, or reached through connect)" : "no such sandbox",
					 NULL, known ? "send the E2B-Traffic-Access-Token header with the sandbox's trafficAccessToken"
						     : NULL);
			return;
		}
		if (e2b_would_wake(sb->id)) {
			/* Served from the start again once its sandbox runs. */
			pv_free(pv);
			if (!e2b_wake(r, sb->id, preview_proxy))
				http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
			return;
		}
		pv_start(pv, r, sb, path, NULL);
		return;
	}
	int rc = check_token(pv, r, sid);
	if (rc) {
		pv_free(pv);
		http_reply_error(r, AE_UNAUTHENTICATED, rc == -ETIME ? "this preview URL has expired"
					: "this preview needs a valid token",
				 rc == -ETIME ? "token expired" : "the " PREVIEW_QUERY_PARAM " parameter or the "
				 PREVIEW_COOKIE " cookie is missing, malformed, or not for this sandbox and port",
				 "ask for a new preview URL: POST /v1/preview {\"sandbox\", \"port\"}");
		return;
	}
	if (!by_host && (!*path || *path == '?')) {
		/* /preview/<id>/<port> must end in '/' for relative links to resolve
		 * under the prefix. */
		char loc[600];
		snprintf(loc, sizeof(loc), "Location: %s/%s\r\n", prefix, path);
		pv_free(pv);
		http_reply(r, 308, "text/plain", "", 0, loc);
		return;
	}
	char msg[160];
	/* A token for an earlier sandbox of the same id: that sandbox no longer exists. */
	if (!sb || sb->created_ms != pv->instance) {
		pv_free(pv);
		snprintf(msg, sizeof(msg), "no sandbox %s", id);
		http_reply_error(r, AE_NOT_FOUND, msg, NULL, NULL);
		return;
	}
	pv_start(pv, r, sb, path, by_host ? NULL : prefix);
	return;

not_found:
	pv_free(pv);
	http_reply_error(r, AE_NOT_FOUND, by_host ? "a preview host is <sandbox id>-<port>.<preview domain> "
			 "(or E2B's <port>-<sandbox id>.<preview domain>)"
			 : "a preview path is /preview/<sandbox id>/<port>/...", NULL, NULL);
}

/* /v1/sandboxes/{id}/expose/{port}[/...]: the real server's authenticated guest
 * proxy. The router has checked the node's bearer token (which never reaches the
 * sandbox); everything after the port is the upstream's path. */
void preview_expose(struct http_req *r)
{
	const char *u = r->arena;
	size_t il = strlen("/v1/sandboxes/") + strlen(r->sandbox_id);
	struct sandbox *sb = find_sandbox(r->sandbox_id);
	char msg[160];
	if (strncmp(u, "/v1/sandboxes/", 14) || strncmp(u + il, "/expose/", 8)) {
		http_reply_error(r, AE_NOT_FOUND, "an expose path is /v1/sandboxes/<id>/expose/<port>/...", NULL, NULL);
		return;
	}
	u += il + 8;
	size_t pl = strspn(u, "0123456789");
	unsigned long port = pl && pl <= 5 ? strtoul(u, NULL, 10) : 0;
	if (!port || port > 65535 || (u[pl] && u[pl] != '/' && u[pl] != '?')) {
		http_reply_error(r, AE_INVALID_ARGUMENT, "the guest port must be an integer in 1-65535", NULL, NULL);
		return;
	}
	if (!sb) {
		snprintf(msg, sizeof(msg), "no sandbox %s", r->sandbox_id);
		http_reply_error(r, AE_NOT_FOUND, msg, NULL, NULL);
		return;
	}
	struct pv *pv = calloc(1, sizeof(*pv));
	if (!pv) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	char prefix[ID_MAX + 40];
	pv->port = (unsigned)port;
	snprintf(pv->sid, sizeof(pv->sid), "%s", sb->id);
	snprintf(prefix, sizeof(prefix), "/v1/sandboxes/%.64s/expose/%u", sb->id, pv->port);
	pv_start(pv, r, sb, u + pl, prefix);
}
