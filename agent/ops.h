/* Entry points of every operation, looked up by name in ops.c. */
#ifndef MITOS_AGENT_OPS_H
#define MITOS_AGENT_OPS_H

#include <stdbool.h>
#include <sys/stat.h>

#include "agent/conn.h"

void op_exec_open(struct stream *s, const struct json *req);
void op_pty_open(struct stream *s, const struct json *req);
void op_attach_open(struct stream *s, const struct json *req);
void op_signal_open(struct stream *s, const struct json *req);
void op_stdin_open(struct stream *s, const struct json *req);
void op_resize_open(struct stream *s, const struct json *req);
void op_list_processes_open(struct stream *s, const struct json *req);
/* The guest's whole process table, from /proc. */
void op_ps_open(struct stream *s, const struct json *req);
void op_kill_open(struct stream *s, const struct json *req);
void op_vitals_open(struct stream *s, const struct json *req);
/* Kills every process the agent started (agent shutdown). */
void exec_kill_all(void);

void op_read_open(struct stream *s, const struct json *req);
void op_write_open(struct stream *s, const struct json *req);
/* A file name of a write in progress (it replaces its target when the write ends):
 * watches report the replacement as a write of the target, never the name itself. */
bool op_write_is_temp(const char *name);
void op_stat_open(struct stream *s, const struct json *req);
/* The ENTRY object (PROTOCOL.md) of path, whose lstat is st. */
void op_write_entry(struct jw *w, const char *path, const struct stat *st);
void op_exists_open(struct stream *s, const struct json *req);
void op_list_open(struct stream *s, const struct json *req);
void op_remove_open(struct stream *s, const struct json *req);
void op_mkdir_open(struct stream *s, const struct json *req);
void op_rename_open(struct stream *s, const struct json *req);
void op_watch_open(struct stream *s, const struct json *req);
void op_archive_open(struct stream *s, const struct json *req);
void op_untar_open(struct stream *s, const struct json *req);

void op_run_code_open(struct stream *s, const struct json *req);
void op_context_create_open(struct stream *s, const struct json *req);
void op_context_list_open(struct stream *s, const struct json *req);
void op_context_remove_open(struct stream *s, const struct json *req);
void op_context_restart_open(struct stream *s, const struct json *req);
void code_kill_all(void);

void op_forward_open(struct stream *s, const struct json *req);
void op_probe_open(struct stream *s, const struct json *req);

void op_health_open(struct stream *s, const struct json *req);
void op_post_fork_open(struct stream *s, const struct json *req);
void op_poweroff_open(struct stream *s, const struct json *req);

#endif
