/* One VM's control socket: the commands of vmm/control_proto.h, run on the VM's loop. */
#include "machine_internal.h"
#include "lib/clock.h"
#include "control_proto.h"
#include "seccomp.h"
#include <errno.h>

/* ---- control socket ---------------------------------------------------------------- */

static cJSON *phases_json(const struct machine *m)
{
	cJSON *a = cJSON_CreateArray();
	for (unsigned i = 0; i < m->result.nphases; i++) {
		cJSON *p = cJSON_CreateObject();
		cJSON_AddStringToObject(p, "name", m->result.phases[i].name);
		cJSON_AddNumberToObject(p, "end_ns", (double)m->result.phases[i].end_ns);
		cJSON_AddItemToArray(a, p);
	}
	return a;
}

_Static_assert(CTL_MAX_DISKS == SNAPSHOT_MAX_DISKS, "a restore names any of the snapshot's disks");

/* A prepared VM (`mitos-vmm vm`) takes a snapshot and starts. */
static cJSON *control_restore(struct machine *m, const struct ctl_request *req,
			      const struct control_fds *fds)
{
	if (req->tap_by_fd && req->tap_fd >= fds->n)
		return control_reply_error("invalid_request", "tap_fd names descriptor %u; %u came with the "
					   "request", req->tap_fd, fds->n);
	struct machine_config c = { .vsock_path = req->vsock, .has_net = req->tap || req->tap_by_fd,
				    .net = { .tap = req->tap, .has_fd = req->tap_by_fd,
					     .fd = req->tap_by_fd ? fds->fd[req->tap_fd] : -1 } };
	bool overridden[SNAPSHOT_MAX_DISKS] = { false };
	for (unsigned i = 0; i < req->ndisks; i++) {
		const struct ctl_disk *d = &req->disks[i];
		if (d->by_fd && d->fd >= fds->n)
			return control_reply_error("invalid_request", "disk %u names descriptor %u; %u came "
						   "with the request", d->index, d->fd, fds->n);
		c.disks[d->index] = (struct virtio_blk_opts){ .path = d->path, .read_only = d->read_only,
							      .has_fd = d->by_fd,
							      .fd = d->by_fd ? fds->fd[d->fd] : -1 };
		overridden[d->index] = true;
	}
	struct mitos_err e = { 0 };
	const struct snapshot_config *sc = machine_snapshot_config(m, req->snapshot, &e);
	if (!sc)
		return control_reply_error("restore_failed", "%s", e.msg);
	int r = 0;
	for (unsigned i = 0; i < SNAPSHOT_MAX_DISKS && !r; i++)
		if (overridden[i] && i >= sc->ndisks)
			r = mitos_err_set(&e, -EINVAL, "disk %u: the snapshot has %u disk(s)", i, sc->ndisks);
	if (!r)
		r = machine_config_from_snapshot(sc, &c, overridden, &e);
	if (r)
		return control_reply_error("restore_failed", "%s", e.msg);
	/* From here a failure may leave the VM half-loaded: it is single-use, so it ends.
	 * Its disks' rings exist once it is loaded: none may be made after. */
	if ((r = machine_load_snapshot(m, req->snapshot, &c, &e)) ||
	    (r = vmm_seccomp_seal_rings(&e)) || (r = machine_start_vcpus(m, &e))) {
		machine_stop(m, MACHINE_END_VMM_ERROR, 0, "%s", e.msg);
		return control_reply_error("restore_failed", "%s", e.msg);
	}
	cJSON *o = control_reply_ok();
	cJSON_AddItemToObject(o, "phases", phases_json(m));
	cJSON_AddNumberToObject(o, "run_start_ns", (double)m->result.run_start_ns);
	return o;
}

cJSON *machine_control_handle(void *ctx, const cJSON *json, const struct control_fds *fds)
{
	struct machine *m = ctx;
	struct ctl_request req;
	const char *code;
	struct mitos_err e = { 0 };
	if (ctl_request_decode(json, &req, &code, &e))
		return control_reply_error(code, "%s", e.msg);
	switch (req.cmd) {
	case CTL_STATUS: {
		cJSON *o = control_reply_ok();
		cJSON_AddStringToObject(o, "state", m->paused ? "paused" : "running");
		cJSON_AddNumberToObject(o, "vcpus", m->nvcpus);
		cJSON_AddNumberToObject(o, "mem_bytes", (double)m->mem.size);
		cJSON_AddBoolToObject(o, "loaded", m->loaded);
		cJSON_AddNumberToObject(o, "first_exit_ns", (double)atomic_load(&m->first_exit_ns));
		cJSON_AddNumberToObject(o, "run_start_ns", (double)m->result.run_start_ns);
		if (m->snapshot_parent)
			cJSON_AddStringToObject(o, "restored_from", m->snapshot_parent);
		return o;
	}
	case CTL_PAUSE:
		if (machine_pause(m))
			return control_reply_error("stopping", "the VM is stopping");
		return control_reply_ok();
	case CTL_RESUME:
		machine_resume(m);
		return control_reply_ok();
	case CTL_STOP:
		machine_stop(m, MACHINE_END_HOST, 0, "stopped through the control socket");
		return control_reply_ok();
	case CTL_RESTORE:
		return control_restore(m, &req, fds);
	case CTL_LINK:
		if (!m->net)
			return control_reply_error("no_device", "this VM has no network device");
		virtio_net_set_link(m->net, req.up);
		return control_reply_ok();
	case CTL_SNAPSHOT: {
		uint64_t t0 = mono_ns();
		if (machine_snapshot(m, req.dir, &e))
			return control_reply_error("snapshot_failed", "%s", e.msg);
		cJSON *o = control_reply_ok();
		cJSON_AddStringToObject(o, "dir", req.dir);
		cJSON_AddNumberToObject(o, "ms", (double)(mono_ns() - t0) / 1e6);
		return o;
	}
	case CTL_CMDS:
		break;
	}
	return control_reply_error("unknown_command", "unknown command");
}
