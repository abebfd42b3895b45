#include "api/mitos/cluster_templates.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/http/errors.h"
#include "api/http/http.h"
#include "api/http/server.h"
#include "api/mitos/cluster_fanout.h"
#include "api/mitos/handlers.h"

/* A kvm node builds a template in minutes on a host that only emulates guest
 * kernel code: every node is waited for up to this. */
#define CT_DEADLINE_MS (3600u * 1000u)

bool cluster_templates_wanted(const struct http_req *r)
{
	const char *scope = http_req_header(r, "x-mitos-template-scope");
	return srv_cfg.peers_file && scope && !strcasecmp(scope, "cluster");
}

static void ct_done(struct http_req *r, void *ctx, const struct fanout_reply *rep, unsigned n, const char *error)
{
	(void)ctx;
	if (!r)
		return;
	cJSON *tpl = NULL, *nodes = cJSON_CreateArray(), *first_err = NULL;
	int first_err_status = 0;
	unsigned made = 0;
	const char *hash = NULL;
	bool mismatch = false;
	char unreachable[512] = "";
	size_t ul = 0;
	for (unsigned i = 0; i < n; i++) {
		cJSON *doc = rep[i].status ? cJSON_ParseWithLength(rep[i].body, rep[i].body_len) : NULL;
		cJSON *node = cJSON_CreateObject();
		cJSON_AddStringToObject(node, "node", rep[i].node);
		cJSON_AddNumberToObject(node, "status", rep[i].status);
		const char *h = cJSON_GetStringValue(cJSON_GetObjectItem(doc, "content_hash"));
		if (rep[i].status == 200 && h) {
			made++;
			cJSON_AddStringToObject(node, "content_hash", h);
			if (!tpl) {
				tpl = cJSON_Duplicate(doc, 1);
				hash = cJSON_GetStringValue(cJSON_GetObjectItem(tpl, "content_hash"));
			} else if (hash && strcmp(hash, h)) {
				mismatch = true;
			}
		} else {
			const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "error"),
										   "message"));
			cJSON_AddStringToObject(node, "error", rep[i].status ? (msg ? msg : "the node refused it")
									     : "the node did not answer");
			if (!rep[i].status && ul + strlen(rep[i].node) + 3 < sizeof(unreachable))
				ul += (size_t)snprintf(unreachable + ul, sizeof(unreachable) - ul, "%s%s", ul ? ", " : "",
						       rep[i].node);
			if (rep[i].status && !first_err) {
				first_err = cJSON_Duplicate(doc, 1);
				first_err_status = rep[i].status;
			}
		}
		cJSON_AddItemToArray(nodes, node);
		cJSON_Delete(doc);
	}
	char extra[700] = "";
	if (ul || error[0])
		snprintf(extra, sizeof(extra), "X-Mitos-Unreachable-Nodes: %s%s%s\r\n", unreachable,
			 ul && error[0] ? ", " : "", error);
	if (!tpl && first_err) {
		/* Every node that answered refused it alike (a bad request): that answer. */
		char *body = cJSON_PrintUnformatted(first_err);
		http_reply(r, first_err_status, "application/json", body ? body : "{}", body ? strlen(body) : 2, extra);
		free(body);
	} else if (!tpl) {
		char msg[700];
		snprintf(msg, sizeof(msg), "no node of the cluster made the template%s%s", error[0] ? ": " : "", error);
		http_reply_error(r, AE_UNAVAILABLE, msg, NULL, "check the nodes' /v1/health and the --peers file");
	} else {
		cJSON_AddItemToObject(tpl, "nodes", nodes);
		nodes = NULL;
		/* Same id, different content: sandboxes would differ by the node they land on. */
		cJSON_AddBoolToObject(tpl, "content_hash_consistent", !mismatch);
		char *body = cJSON_PrintUnformatted(tpl);
		int status = made == n && n && !error[0] ? 200 : 207;
		http_reply(r, status, "application/json", body ? body : "{}", body ? strlen(body) : 2, extra);
		free(body);
	}
	cJSON_Delete(tpl);
	cJSON_Delete(nodes);
	cJSON_Delete(first_err);
}

void cluster_templates_start(struct http_req *r)
{
	char auth[2300], idem[400] = "";
	cluster_client_auth(r, auth, sizeof(auth));
	const char *key = http_req_header(r, "idempotency-key");
	if (key && cluster_printable(key, false) && strlen(key) < 300)
		snprintf(idem, sizeof(idem), "Idempotency-Key: %s\r\n", key);
	size_t blen = r->body_len, cap = 600 + strlen(auth) + strlen(idem) + blen;
	char *req = malloc(cap);
	if (!req) {
		http_reply_error(r, AE_INTERNAL, "out of memory", NULL, NULL);
		return;
	}
	int n = snprintf(req, cap,
			 "POST /v1/templates HTTP/1.0\r\nHost: mitos-peer\r\n%s%sContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n", auth, idem, blen);
	if (blen)
		memcpy(req + n, r->body, blen);
	int rc = cluster_fanout(r, req, (size_t)n + blen, CT_DEADLINE_MS, ct_done, NULL);
	free(req);
	if (rc == -EBUSY)
		http_reply_error(r, AE_UNAVAILABLE, "too many cluster-wide requests are running on this node", NULL,
				 "retry in a moment");
	else if (rc)
		http_reply_error(r, AE_INTERNAL, "cannot reach the cluster's nodes", NULL, NULL);
}
