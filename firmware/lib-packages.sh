# Shared by the firmware build scripts (sourced): `die` and `ensure_packages` report
# under the name in $prog, which the sourcing script sets first.
# shellcheck shell=bash disable=SC2154  # $prog comes from the sourcing script

die() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}

ensure_packages() {
	local p missing=() sudo=()
	for p in "$@"; do
		if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) != installed ]]; then
			missing+=("$p")
		fi
	done
	((${#missing[@]})) || return 0
	if ((EUID != 0)); then
		command -v sudo >/dev/null || die "missing packages: ${missing[*]} (run as root or install them)"
		sudo=(sudo)
	fi
	echo "$prog: installing with apt-get: ${missing[*]}" >&2
	if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -q -y --no-install-recommends "${missing[@]}" >&2; then
		"${sudo[@]}" apt-get update -q >&2
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -q -y --no-install-recommends "${missing[@]}" >&2 ||
			die "could not install: ${missing[*]}"
	fi
}
