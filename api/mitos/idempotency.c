#include "api/mitos/idempotency.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "api/http/uring.h"

#define IDEM_SLOTS 4096
#define IDEM_TTL_MS (24ull * 3600 * 1000)

struct idem_slot {
	char key[IDEM_KEY_MAX + 1];
	char id[65];              /* "" while the create is in flight */
	enum idem_kind kind;
	uint64_t at_ms;           /* wall clock of the reservation or binding; 0: free */
};

static struct idem_slot slots[IDEM_SLOTS];

static struct idem_slot *find(const char *key)
{
	for (size_t i = 0; i < IDEM_SLOTS; i++)
		if (slots[i].at_ms && !strcmp(slots[i].key, key))
			return &slots[i];
	return NULL;
}

/* A free or expired slot, else the oldest binding (a bounded table must forget someone). */
static struct idem_slot *victim(uint64_t now)
{
	struct idem_slot *old = &slots[0];
	for (size_t i = 0; i < IDEM_SLOTS; i++) {
		if (!slots[i].at_ms || now - slots[i].at_ms > IDEM_TTL_MS)
			return &slots[i];
		if (slots[i].at_ms < old->at_ms)
			old = &slots[i];
	}
	return old;
}

int idem_begin(const char *key, enum idem_kind kind, char *id, size_t idlen)
{
	if (!key || !*key)
		return IDEM_PROCEED;
	if (strlen(key) > IDEM_KEY_MAX)
		return -EINVAL;
	uint64_t now = ur_wall_ms();
	struct idem_slot *s = find(key);
	if (s && s->kind == kind && now - s->at_ms <= IDEM_TTL_MS) {
		if (!s->id[0])
			return IDEM_IN_FLIGHT;
		snprintf(id, idlen, "%s", s->id);
		return IDEM_REPLAY;
	}
	if (!s)
		s = victim(now);
	snprintf(s->key, sizeof(s->key), "%s", key);
	s->id[0] = 0;
	s->kind = kind;
	s->at_ms = now ? now : 1;
	return IDEM_PROCEED;
}

void idem_record(const char *key, enum idem_kind kind, const char *id)
{
	if (!key || !*key)
		return;
	struct idem_slot *s = find(key);
	if (!s)
		s = victim(ur_wall_ms());
	snprintf(s->key, sizeof(s->key), "%s", key);
	snprintf(s->id, sizeof(s->id), "%s", id);
	s->kind = kind;
	s->at_ms = ur_wall_ms();
}

void idem_release(const char *key)
{
	struct idem_slot *s = key && *key ? find(key) : NULL;
	if (s && !s->id[0])
		s->at_ms = 0;
}
