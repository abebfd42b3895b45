/* sudo in a process-engine sandbox. Everything there runs under no_new_privs, so the
 * setuid sudo of a template refuses; the sandbox's /usr/bin/sudo is then this agent
 * binary (sudo_shim_main), which asks the agent, over a Unix socket, to run the
 * command as root with the caller's stdin, stdout and stderr. The agent does so for
 * a caller the template's sudoers lets run anything without a password, as E2B's
 * base template has it for `user` (sudo_server.c).
 *
 * The socket is SOCK_SEQPACKET. Request: SUDO_MAGIC, then NUL-terminated fields
 * "user=NAME" (the target), "shell=none|plain|login" (-s, -i), "keepenv=0|1" (-E),
 * "cwd=PATH", "env=K=V"..., "arg=X"...; with SCM_RIGHTS the caller's fds 0, 1, 2. No
 * arg and shell=none only asks whether the caller may (sudo -v). Reply: "status=N" (a
 * wait status) or "error=TEXT", then the connection ends. While the command runs,
 * the caller may send "signal=N" (passed to its process group); when the caller goes,
 * the command is killed. */
#ifndef MITOS_AGENT_SUDO_H
#define MITOS_AGENT_SUDO_H

#define SUDO_MAGIC "MITOS-SUDO 1"
/* Where the process engine's agent listens (its /run/mitos, read-only to the sandbox). */
#define SUDO_SOCKET "/run/mitos/sudo.sock"
#define SUDO_MSG_MAX (128u << 10) /* under the kernel's bound on a datagram (wmem_max) */

/* Serves sudo requests on a socket at path (any local user may connect). */
int sudo_listen(const char *path);
/* main() of the agent binary run as `sudo`; path is the agent's socket. */
int sudo_shim_main(int argc, char **argv, const char *path);

#endif
