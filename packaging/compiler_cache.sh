# Sourced by build.sh and tests/run.sh: compile through ccache when it is installed. Its cache
# lives outside the repository (~/.cache/ccache) and serves every clone of it: paths are taken
# relative to the checkout, so a fresh clone rebuilds only what changed.
# Sets compiler_cache: the CMake arguments (empty without ccache).
compiler_cache=()
if command -v ccache > /dev/null; then
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
  export CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-20G}"
  compiler_cache=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
