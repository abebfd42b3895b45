/* fork+exec of user commands with fd plumbing, session, optional controlling
 * terminal, user switch and working directory. Failures in the child before
 * exec come back to the caller as -errno plus the step that failed. */
#ifndef MITOS_AGENT_SPAWN_H
#define MITOS_AGENT_SPAWN_H

#include <stdbool.h>
#include <sys/types.h>

#include "agent/users.h"

#define SPAWN_MAX_FDS 5

struct spawn_req {
	char *const *argv;
	char *const *envp;
	const char *cwd;             /* NULL: stay where the agent is */
	const struct user_info *user; /* NULL: keep the agent's identity */
	int fds[SPAWN_MAX_FDS];       /* become the child's fds 0..nfds-1 */
	int nfds;
	bool controlling_tty;         /* fd 0 is a pty slave to make the ctty */
};

/* Returns 0 with *pid set, or -errno with *failed naming the step
 * ("chdir", "setuid", "exec", ...). */
int spawn_process(const struct spawn_req *r, pid_t *pid, const char **failed);

/* Builds the environment for a user command: the agent's own environment, then
 * HOME/USER/LOGNAME/SHELL of user (if any), then the request's overrides
 * (a JSON object of strings, may be NULL). Free with spawn_env_free. */
struct json;
char **spawn_env_build(const struct user_info *user, const struct json *overrides, const char *extra);
void spawn_env_free(char **env);

#endif
