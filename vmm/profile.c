#include "profile.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int profile_open(struct profile *p, const char *path, struct mitos_err *e)
{
	p->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	if (p->fd < 0)
		return mitos_err_set(e, -errno, "--profile %s: %s", path, strerror(errno));
	return 0;
}

void profile_sample(const struct profile *p, struct vcpu *v, uint64_t now_ns)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	if (p->fd < 0 || ioctl(v->fd, KVM_GET_REGS, &r) < 0 || ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
		return;
	char line[96];
	int n = snprintf(line, sizeof(line), "%.3f %u %llx %s\n",
			 (double)(now_ns - p->start_ns) / 1e6, v->id, (unsigned long long)r.rip,
			 (s.cs.selector & 3) ? "user" : "kernel");
	/* One write per line with O_APPEND: vCPU threads never interleave within a line.
	 * A lost sample is not worth disturbing the guest for. */
	ssize_t w = write(p->fd, line, (size_t)n);
	(void)w;
}

void profile_close(struct profile *p)
{
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
}
