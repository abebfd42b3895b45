#include "api/sandbox/template_hash.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/sandbox/registry.h"
#include "api/sandbox/sandboxes.h"

static void feed(struct sha256_ctx *h, const char *s)
{
	sha256_update(h, strlen(s) + 1, (const uint8_t *)s); /* with its NUL: "ab"+"c" != "a"+"bc" */
}

static int by_key(const void *a, const void *b)
{
	return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* The value with every object's keys in order, so equal specs hash alike. */
static void feed_json(struct sha256_ctx *h, const cJSON *v)
{
	if (cJSON_IsObject(v)) {
		int n = cJSON_GetArraySize(v), i = 0;
		const cJSON **kids = calloc((size_t)(n ? n : 1), sizeof(*kids));
		if (!kids)
			return;
		for (const cJSON *c = v->child; c && i < n; c = c->next)
			kids[i++] = c;
		qsort(kids, (size_t)i, sizeof(*kids), by_key);
		feed(h, "{");
		for (int k = 0; k < i; k++) {
			feed(h, kids[k]->string);
			feed_json(h, kids[k]);
		}
		feed(h, "}");
		free(kids);
	} else if (cJSON_IsArray(v)) {
		feed(h, "[");
		for (const cJSON *c = v->child; c; c = c->next)
			feed_json(h, c);
		feed(h, "]");
	} else {
		char *s = cJSON_PrintUnformatted(v);
		feed(h, s ? s : "");
		free(s);
	}
}

/* A cache path's last two components (images/<key>/rootfs -> "<key>/rootfs"): the
 * content's name, wherever a node keeps its cache. */
static void feed_file(struct sha256_ctx *h, const char *path)
{
	char real[PATH_MAX];
	if (!path || !*path || !realpath(path, real)) {
		feed(h, path ? path : "");
		return;
	}
	char *last = strrchr(real, '/'), *prev = NULL;
	for (char *p = real; last && p < last; p++)
		if (*p == '/')
			prev = p;
	feed(h, prev ? prev + 1 : real);
}

static void hex_digest(struct sha256_ctx *h, char out[TEMPLATE_HASH_HEX])
{
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_digest(h, sizeof(d), d);
	for (size_t i = 0; i < sizeof(d); i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

void json_digest_hex(const cJSON *v, char out[TEMPLATE_HASH_HEX])
{
	struct sha256_ctx h;
	sha256_init(&h);
	feed_json(&h, v);
	hex_digest(&h, out);
}

void template_content_hash(const struct template_rec *t, const char *engine, char out[TEMPLATE_HASH_HEX])
{
	struct sha256_ctx h;
	sha256_init(&h);
	feed(&h, "mitos-template-v1");
	feed(&h, engine);
	feed(&h, t->image);
	char path[sizeof(t->root) + 16];
	snprintf(path, sizeof(path), "%s/kvm.json", t->root);
	cJSON *kvm = registry_read_json(path);
	if (kvm) {
		/* A kvm template: its kernel, disk and guest shape (its root is a snapshot). */
		static const char *const files[] = { "kernel", "rootfs", "initrd" };
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
			feed_file(&h, cJSON_GetStringValue(cJSON_GetObjectItem(kvm, files[i])));
		static const char *const shape[] = { "cmdline", "mem_mib", "vcpus" };
		for (size_t i = 0; i < sizeof(shape) / sizeof(shape[0]); i++)
			feed_json(&h, cJSON_GetObjectItem(kvm, shape[i]));
		cJSON_Delete(kvm);
	} else {
		feed_file(&h, t->root);
	}
	feed_json(&h, t->spec);
	hex_digest(&h, out);
}
