#include "agent/users.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Splits one colon-separated line into at most max fields, in place. */
static int split_fields(char *line, char **f, int max)
{
	int n = 0;
	line[strcspn(line, "\n")] = 0;
	f[n++] = line;
	for (char *p = line; *p && n < max; p++) {
		if (*p == ':') {
			*p = 0;
			f[n++] = p + 1;
		}
	}
	return n;
}

static bool parse_id(const char *s, unsigned long *out)
{
	char *end;
	if (!*s)
		return false;
	errno = 0;
	*out = strtoul(s, &end, 10);
	return !errno && !*end && *out <= 0xfffffffful;
}

/* Finds the passwd entry whose name equals name, or whose uid equals uid when
 * name is NULL. */
static int passwd_find(const char *name, uid_t uid, struct user_info *out)
{
	FILE *f = fopen("/etc/passwd", "re");
	if (!f)
		return -errno;
	char *line = NULL;
	size_t cap = 0;
	int rc = -ENOENT;
	while (getline(&line, &cap, f) > 0) {
		char *fl[7];
		unsigned long u, g;
		if (split_fields(line, fl, 7) < 7 || !parse_id(fl[2], &u) || !parse_id(fl[3], &g))
			continue;
		if (name ? strcmp(fl[0], name) != 0 : u != uid)
			continue;
		out->uid = (uid_t)u;
		out->gid = (gid_t)g;
		snprintf(out->name, sizeof(out->name), "%s", fl[0]);
		snprintf(out->home, sizeof(out->home), "%s", *fl[5] ? fl[5] : "/");
		snprintf(out->shell, sizeof(out->shell), "%s", *fl[6] ? fl[6] : "/bin/sh");
		rc = 0;
		break;
	}
	free(line);
	fclose(f);
	return rc;
}

int user_by_uid(uid_t uid, struct user_info *out)
{
	int rc = passwd_find(NULL, uid, out);
	if (rc) {
		/* A uid without an entry still runs: give it a neutral identity. */
		memset(out, 0, sizeof(*out));
		out->uid = uid;
		out->gid = (gid_t)uid;
		snprintf(out->name, sizeof(out->name), "%u", (unsigned)uid);
		snprintf(out->home, sizeof(out->home), "/");
		snprintf(out->shell, sizeof(out->shell), "/bin/sh");
	}
	return rc;
}

int user_lookup(const char *name, struct user_info *out)
{
	unsigned long id;
	if (parse_id(name, &id)) {
		user_by_uid((uid_t)id, out);
		return 0;
	}
	return passwd_find(name, 0, out);
}

void group_name(gid_t gid, char *buf, size_t len)
{
	snprintf(buf, len, "%u", (unsigned)gid);
	FILE *f = fopen("/etc/group", "re");
	if (!f)
		return;
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, f) > 0) {
		char *fl[4];
		unsigned long g;
		if (split_fields(line, fl, 4) >= 3 && parse_id(fl[2], &g) && g == gid) {
			snprintf(buf, len, "%s", fl[0]);
			break;
		}
	}
	free(line);
	fclose(f);
}

bool user_in_group(const struct user_info *u, const char *group)
{
	FILE *f = fopen("/etc/group", "re");
	if (!f)
		return false;
	char *line = NULL;
	size_t cap = 0;
	bool in = false;
	while (!in && getline(&line, &cap, f) > 0) {
		char *fl[4];
		unsigned long g;
		if (split_fields(line, fl, 4) < 4 || strcmp(fl[0], group) || !parse_id(fl[2], &g))
			continue;
		in = g == u->gid;
		for (char *m = strtok(fl[3], ","); m && !in; m = strtok(NULL, ","))
			in = !strcmp(m, u->name);
	}
	free(line);
	fclose(f);
	return in;
}
