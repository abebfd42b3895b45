#include <string.h>

#include "agent/ops.h"

static const struct {
	const char *name;
	op_open_fn open;
} ops[] = {
	{ "exec", op_exec_open },
	{ "pty", op_pty_open },
	{ "attach", op_attach_open },
	{ "signal", op_signal_open },
	{ "stdin", op_stdin_open },
	{ "resize", op_resize_open },
	{ "processes", op_list_processes_open },
	{ "ps", op_ps_open },
	{ "kill", op_kill_open },
	{ "vitals", op_vitals_open },
	{ "read", op_read_open },
	{ "write", op_write_open },
	{ "stat", op_stat_open },
	{ "exists", op_exists_open },
	{ "list", op_list_open },
	{ "remove", op_remove_open },
	{ "mkdir", op_mkdir_open },
	{ "rename", op_rename_open },
	{ "watch", op_watch_open },
	{ "archive", op_archive_open },
	{ "untar", op_untar_open },
	{ "run_code", op_run_code_open },
	{ "context_create", op_context_create_open },
	{ "context_list", op_context_list_open },
	{ "context_remove", op_context_remove_open },
	{ "context_restart", op_context_restart_open },
	{ "forward", op_forward_open },
	{ "probe", op_probe_open },
	{ "health", op_health_open },
	{ "post_fork", op_post_fork_open },
	{ "poweroff", op_poweroff_open },
};

op_open_fn ops_find(const char *name)
{
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (!strcmp(ops[i].name, name))
			return ops[i].open;
	return NULL;
}
