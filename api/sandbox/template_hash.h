/* A template's content hash: what it is made of, not where or when. Two nodes
 * that answer the same hash for a template make the same sandboxes from it (the
 * cluster checks this when it makes a template on every node, docs/cluster.md). */
#ifndef MITOS_API_TEMPLATE_HASH_H
#define MITOS_API_TEMPLATE_HASH_H

struct template_rec;
struct cJSON;

#define TEMPLATE_HASH_HEX 65

/* SHA-256 over the engine, the files it starts from (named by their content-
 * addressed cache paths: images/<key>/..., kernel/<key>/...), the kvm guest's
 * shape, and the spec with its keys sorted; lower-case hex into out. */
void template_content_hash(const struct template_rec *t, const char *engine, char out[TEMPLATE_HASH_HEX]);

/* SHA-256 of a JSON value with every object's keys sorted (equal values hash alike
 * whatever their key order), lower-case hex into out. */
void json_digest_hex(const struct cJSON *v, char out[TEMPLATE_HASH_HEX]);

#endif
