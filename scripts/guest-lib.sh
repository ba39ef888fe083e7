# Shell functions both guest scripts use (sourced, not run): root for the
# package steps, apt with retries, and the .deb cache. The caller sets
# $script (its name, for messages), $cache and $work.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# A mirror caught mid-sync fails one index; retry, then carry on with whatever
# lists apt has (what follows fails clearly if they are not enough).
update_lists() {
  local try
  for try in 1 2 3; do
    echo "$script: apt-get update (try $try)"
    if as_root apt-get update -qq; then return 0; fi
    sleep 10
  done
}

apt_install() {
  echo "$script: installing $* from Debian's packages"
  update_lists
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Prints the cached .deb matching the glob $2, downloading package $1 first when
# there is none. apt-get runs as the current user, or as root it would warn that
# the _apt sandbox user cannot write the cache directory.
download() {
  local pkg=$1 pattern=$2
  if ! compgen -G "$cache/$pattern" >/dev/null; then
    echo "$script: downloading $pkg" >&2
    (cd "$cache" && apt-get -q -o APT::Sandbox::User="$(id -un)" download "$pkg") >&2 || return 1
  fi
  compgen -G "$cache/$pattern" | sort | tail -1
}

# Extracts a .deb into a directory named after it, once; prints the directory.
extract() {
  local deb=$1 dir
  dir=$work/$(basename "$deb" .deb)
  if [ ! -d "$dir" ]; then
    dpkg-deb -x "$deb" "$dir.tmp"
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}
