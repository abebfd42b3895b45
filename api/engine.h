/* How sandboxes are run. An engine starts a sandbox from a template (a root
 * filesystem: for now a directory) and, optionally, a parent's writable layer;
 * hands back where its agent listens; pauses, resumes and kills it; and removes
 * what it left on disk. The registry and the API layer never know which engine
 * runs underneath. */
#ifndef MITOS_API_ENGINE_H
#define MITOS_API_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct engine_start {
	const char *id;
	const char *dir;           /* the sandbox's own directory in the state dir */
	const char *template_root; /* read-only lower layer */
	const char *copy_from;     /* a parent's writable layer to copy, or NULL */
	int ready_fd;              /* gets one byte once the agent accepts connections */
};

struct engine_proc {
	pid_t pid;                 /* the sandbox's init, as the host sees it */
	int pidfd;                 /* readable when it exits */
	uint64_t start_time;       /* /proc/PID/stat field 22: tells a reused pid apart */
	bool child;                /* ours to reap */
};

struct engine_ops {
	const char *name;
	/* Where the agent of a sandbox in dir listens (a Unix socket path). */
	int (*agent_socket)(const char *dir, char *out, size_t outlen);
	/* Where its writable layer is, for fork. */
	int (*writable_layer)(const char *dir, char *out, size_t outlen);
	int (*start)(const struct engine_start *s, struct engine_proc *p, char *err, size_t errlen);
	int (*pause)(const struct engine_proc *p);
	int (*resume)(const struct engine_proc *p);
	int (*kill)(const struct engine_proc *p);
	/* After the sandbox exited: the reason it gave, if any (start errors). */
	void (*exit_reason)(const char *dir, char *out, size_t outlen);
	/* Removes dir and everything in it. */
	int (*cleanup)(const char *dir);
};

extern const struct engine_ops engine_process_ops;

/* Checks that the process engine can run here; fills why if not. */
int engine_process_available(char *why, size_t whylen);
/* Sets the mitos-agent binary and its run_code helper, and the paths sandboxes
 * must not see (the state dir, the token file). */
int engine_process_configure(const char *agent_path, const char *state_dir, const char *token_file,
			     char *err, size_t errlen);

/* Reads field 22 of /proc/PID/stat (0 when the process is gone). */
uint64_t engine_proc_start_time(pid_t pid);

#endif
