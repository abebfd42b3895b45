/* This node's place in a cluster: the tag that names it inside every sandbox id it
 * makes (so a router can send each request to the sandbox's node from the request
 * alone; docs/cluster.md), and drain mode (refuse creates, let live sandboxes end). */
#ifndef MITOS_API_NODE_H
#define MITOS_API_NODE_H

#include <stdbool.h>
#include <stddef.h>

#define NODE_TAG_MAX 16

/* A tag is 1..16 of [a-z0-9]: one dash-free piece of a DNS label, so ids stay
 * valid in preview host names and E2B's {port}-{id}.{domain} hosts. */
bool node_tag_valid(const char *tag);
/* 0, or -EINVAL for an invalid tag. Without a tag the node is standalone. */
int node_set_tag(const char *tag);
const char *node_tag(void); /* "" when standalone */

/* A fresh random id: sb-<16 hex> standalone, sb-<16 hex>-<tag> on a tagged node. */
void node_new_sandbox_id(char *out, size_t n);
/* The id this node gives a sandbox whose client chose requested (a valid id): the
 * same when standalone or when it already ends in -<tag>, else requested-<tag>, so
 * a router still finds the node from it (clients use the id the server answers).
 * -ENAMETOOLONG when that is over 64 characters or n. */
int node_sandbox_id_for(const char *requested, char *out, size_t n);

void node_set_draining(bool on);
bool node_draining(void);

#endif
