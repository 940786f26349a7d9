# Helpers for guest test scripts, sourced as /lib/vgpu-test.sh (busybox sh).
# Every result is one serial line `VGPU-TEST: <name> <PASS|FAIL|INFO|READY> <detail>` that the host parses.

FAILED=0

# result NAME KIND DETAIL...: prints one marker line.
result() { echo "VGPU-TEST: $*"; }
pass() { _n=$1; shift; result "$_n PASS $*"; }
fail() { _n=$1; shift; result "$_n FAIL $*"; FAILED=1; }
info() { _n=$1; shift; result "$_n INFO $*"; }

# wait_until SECONDS CMD...: polls CMD every 0.1 s until it succeeds (0) or SECONDS pass (1).
wait_until() {
    _ticks=$(($1 * 10)); shift
    while ! "$@" 2>/dev/null; do
        [ "$_ticks" -le 0 ] && return 1
        _ticks=$((_ticks - 1))
        usleep 100000
    done
}

# host_sync NAME DETAIL [SECONDS]: prints `NAME READY DETAIL` and waits for the host to answer one line on
# the console (it does so after acting, e.g. after a screendump). Sets HOST_REPLY; fails on timeout.
host_sync() {
    HOST_REPLY=
    result "$1 READY $2"
    read -t "${3:-30}" HOST_REPLY
}

# repeat_to SIZE IN OUT: writes SIZE bytes of IN repeated to OUT (doubling, so it stays fast).
repeat_to() {
    cp "$2" "$3.rep"
    while [ "$(wc -c <"$3.rep")" -lt "$1" ]; do
        cat "$3.rep" "$3.rep" >"$3.rep2" && mv "$3.rep2" "$3.rep"
    done
    head -c "$1" "$3.rep" >"$3"
    rm -f "$3.rep"
}

# pixel_file FILE COUNT B G R: COUNT x8r8g8b8 pixels of one colour (bytes in memory order B G R X; decimal).
pixel_file() {
    printf "\\$(printf %03o "$3")\\$(printf %03o "$4")\\$(printf %03o "$5")\\000" >"$1.px"
    repeat_to $(($2 * 4)) "$1.px" "$1"
    rm -f "$1.px"
}
