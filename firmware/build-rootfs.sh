#!/usr/bin/env bash
# Build a read-only root filesystem image (ext4) for a Mitos guest: mitos-agent as init,
# busybox-static, and with --python this host's Debian python3 + IPython for run_code.
# See firmware/README.md.
set -euo pipefail

usage() {
	cat <<EOF
Usage: firmware/build-rootfs.sh --agent PATH --out FILE [--python] [--numpy]

Writes a raw ext4 image (no journal, no metadata checksums: it is mounted read-only and
every guest kernel instruction may be emulated) holding
  /usr/bin/mitos-agent   the agent at PATH (statically linked; stripped on the way in);
                         boot with init=/usr/bin/mitos-agent root=/dev/vda ro
  /usr/bin/busybox       busybox-static and its applets (sh, echo, cat, ...)
  /etc/passwd, /etc/group, empty mount points; /bin, /sbin, /lib, /lib64 link to /usr
With --python also Debian's python3 and python3-ipython with everything they depend
on, copied from this host's installed packages (dpkg -L; documentation left out, the
byte-compiled __pycache__ files kept), and mitos_kernel.py in /usr/share/mitos, so
the agent's run_code works. --numpy adds python3-numpy (implies --python; the fork stress
suite computes with it). The agent mounts a tmpfs overlay over the read-only root,
so every sandbox started from one image gets its own writable files.

Missing packages (e2fsprogs, busybox-static, binutils, and with --python python3 and
python3-ipython, with --numpy python3-numpy) are installed with apt-get (as root, or through sudo).
EOF
}

agent=""
out=""
python=0
numpy=0
while (($#)); do
	case $1 in
	--agent)
		(($# >= 2)) || { echo "build-rootfs: --agent needs a path" >&2; exit 2; }
		agent=$2
		shift 2
		;;
	--out)
		(($# >= 2)) || { echo "build-rootfs: --out needs a path" >&2; exit 2; }
		out=$2
		shift 2
		;;
	--python) python=1; shift ;;
	--numpy) python=1; numpy=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "build-rootfs: unknown argument: $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ -n $agent && -n $out ]] || { echo "build-rootfs: --agent and --out are required (see --help)" >&2; exit 2; }

script_dir=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
helper=$script_dir/../agent/mitos_kernel.py

prog=build-rootfs
# shellcheck source=firmware/lib-packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-packages.sh"

is_static() {
	! readelf -l "$1" | grep -q 'INTERP'
}

# Installed packages that $@ need at run time (Depends and Pre-Depends, recursively).
# Packaging machinery that only maintainer scripts use stays out.
package_closure() {
	apt-cache depends --recurse --installed --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances "$@" |
		awk '/^[a-z0-9]/ { print $1 }' | sed 's/:.*//' | sort -u |
		grep -vxE 'debconf|debconf-2.0|perl-base|dpkg|install-info|libc-bin'
}

[[ -f $agent ]] || die "agent binary not found: $agent"
packages=(e2fsprogs busybox-static binutils)
python_packages=(python3 python3-ipython)
((numpy)) && python_packages+=(python3-numpy)
((python)) && packages+=("${python_packages[@]}")
ensure_packages "${packages[@]}"
is_static "$agent" || die "$agent is dynamically linked (a sanitizer build?); the image needs the static agent of a plain build"
if [[ ! -x /bin/busybox ]] || ! is_static /bin/busybox; then
	die "/bin/busybox is missing or not static (package busybox-static)"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage" "$stage.files" "$stage.pycache"' EXIT
mkdir -p "$stage"/usr/{bin,sbin,lib,lib64,share/mitos} "$stage"/{etc,proc,sys,dev,tmp,run,root,mnt,home,var/tmp}
# Debian 12's merged /usr: package files named /bin/x or /lib/x land under /usr.
for d in bin sbin lib lib64; do
	ln -s "usr/$d" "$stage/$d"
done
chmod 1777 "$stage/tmp" "$stage/var/tmp"
chmod 0700 "$stage/root"

if ((python)); then
	mapfile -t closure < <(package_closure "${python_packages[@]}")
	echo "build-rootfs: copying ${#closure[@]} packages: ${closure[*]}" >&2
	files=$stage.files
	pycache=$stage.pycache
	for p in "${closure[@]}"; do
		dpkg -L "$p"
	done | grep -vE '^/usr/share/(doc|man|info|locale|lintian|bug)/|^/\.$' | sort -u |
		while IFS= read -r f; do
			[[ -f $f || -L $f ]] && printf '%s\n' "$f"
		done >"$files"
	# Byte-compiled modules are made by postinst scripts, not listed by dpkg: take them
	# too, or every python start recompiles what it imports.
	grep '\.py$' "$files" | xargs -r -d '\n' dirname | sort -u | while IFS= read -r d; do
		[[ -d $d/__pycache__ ]] && find "$d/__pycache__" -name '*.pyc'
	done >"$pycache"
	cat "$files" "$pycache" | tar -cf - --no-recursion -T - 2>/dev/null |
		tar -xf - -C "$stage" --keep-directory-symlink
	rm -f "$files" "$pycache"
	# Links that postinst scripts make with update-alternatives are not listed by dpkg:
	# without /usr/lib/x86_64-linux-gnu/libblas.so.3 (-> /etc/alternatives/... ->
	# blas/libblas.so.3) numpy cannot load. Each alternative whose chosen file was copied
	# gets its link, pointing at that file.
	for alt in /etc/alternatives/*; do
		target=$(readlink -f "$alt") || continue
		[[ -e $stage$target ]] || continue
		link=$(update-alternatives --query "${alt##*/}" 2>/dev/null | sed -n 's/^Link: //p')
		[[ -n $link && ! -e $stage$link && ! -L $stage$link ]] || continue
		mkdir -p "$stage$(dirname "$link")"
		ln -s "$target" "$stage$link"
	done
	[[ -x $stage/usr/bin/python3 ]] || die "python3 did not make it into the image"
	cp "$helper" "$stage/usr/share/mitos/mitos_kernel.py"
fi

strip -o "$stage/usr/bin/mitos-agent" "$agent"
cp /bin/busybox "$stage/usr/bin/busybox"
# --list-full prints each applet with its directory (bin/sh, usr/bin/env, ...).
while IFS= read -r applet; do
	[[ -e $stage/$applet || -L $stage/$applet ]] || ln -s /usr/bin/busybox "$stage/$applet"
done < <(/bin/busybox --list-full)
cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo "mitos" >"$stage/etc/hostname"

# Room for the files plus ext4's own metadata, in whole MiB.
size_mib=$(($(du -s -B1M "$stage" | cut -f1) * 5 / 4 + 16))
tmp_out=$out.tmp.$$
rm -f "$tmp_out"
mkfs.ext4 -q -F -d "$stage" -O ^has_journal,^metadata_csum -E root_owner=0:0 -b 4096 \
	-L mitos-root "$tmp_out" "${size_mib}M" >&2 || die "mkfs.ext4 failed"
mv -f "$tmp_out" "$out"
echo "build-rootfs: wrote $out (${size_mib} MiB, $(du -h "$out" | cut -f1) allocated)" >&2
