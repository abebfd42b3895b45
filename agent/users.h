/* User and group lookup by reading /etc/passwd and /etc/group directly: the
 * agent is static, and glibc's NSS (getpwnam) does not work in static binaries. */
#ifndef MITOS_AGENT_USERS_H
#define MITOS_AGENT_USERS_H

#include <stdbool.h>
#include <sys/types.h>

struct user_info {
	uid_t uid;
	gid_t gid;
	char name[64];
	char home[256];
	char shell[128];
};

/* name is a user name or a decimal uid. 0 or -ENOENT. */
int user_lookup(const char *name, struct user_info *out);
int user_by_uid(uid_t uid, struct user_info *out);
/* Writes the group's name, or its number when /etc/group has no entry. */
void group_name(gid_t gid, char *buf, size_t len);
/* Whether u belongs to the group of that name (its primary group or a member). */
bool user_in_group(const struct user_info *u, const char *group);

#endif
