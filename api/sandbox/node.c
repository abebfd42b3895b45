#include "api/sandbox/node.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static char tag[NODE_TAG_MAX + 1];
static bool draining;

bool node_tag_valid(const char *t)
{
	size_t n = t ? strlen(t) : 0;
	if (n < 1 || n > NODE_TAG_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((t[i] >= 'a' && t[i] <= 'z') || (t[i] >= '0' && t[i] <= '9')))
			return false;
	return true;
}

int node_set_tag(const char *t)
{
	if (!node_tag_valid(t))
		return -EINVAL;
	snprintf(tag, sizeof(tag), "%s", t);
	return 0;
}

const char *node_tag(void)
{
	return tag;
}

void node_new_sandbox_id(char *out, size_t n)
{
	uint8_t b[8];
	if (getrandom(b, sizeof(b), 0) != sizeof(b)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		memcpy(b, &ts.tv_nsec, sizeof(ts.tv_nsec) < sizeof(b) ? sizeof(ts.tv_nsec) : sizeof(b));
	}
	snprintf(out, n, "sb-%02x%02x%02x%02x%02x%02x%02x%02x%s%s", b[0], b[1], b[2], b[3], b[4], b[5], b[6],
		 b[7], tag[0] ? "-" : "", tag);
}

static bool ends_in_tag(const char *id)
{
	size_t n = strlen(id), tn = strlen(tag);
	return n > tn + 1 && id[n - tn - 1] == '-' && !strcmp(id + n - tn, tag);
}

int node_sandbox_id_for(const char *requested, char *out, size_t n)
{
	bool keep = !tag[0] || ends_in_tag(requested);
	int len = snprintf(out, n, "%s%s%s", requested, keep ? "" : "-", keep ? "" : tag);
	if (len < 0 || (size_t)len >= n || len > 64)
		return -ENAMETOOLONG;
	return 0;
}

void node_set_draining(bool on)
{
	draining = on;
}

bool node_draining(void)
{
	return draining;
}
