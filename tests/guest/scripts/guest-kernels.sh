# Real-guest script for guest kernels (busybox sh, run by /init; needs /bin/vgpu-smi, the C example
# /bin/vgpu-reduce and the modules in /share/vgpu/). Like vgpu-smi.sh it asks the host for each step
# (`cmd READY`) and reports markers. Commands (one line from the host):
#   smi                       -> `smi PASS type=.. policy=.. engine=.. modules=true|false loop_budget=..
#                                jobs=.. jobs_failed=.. refused=.. busy_ns=.. last_refusal=..` (spaces as _)
#   bench KERNEL SIZE SECONDS -> `bench PASS|FAIL kernel=.. jobs=.. jps=.. p50_us=.. verified=..` (built-in kernels)
#   kbench ARGS...            -> `vgpu-smi kbench ARGS --json`: one `kbench-case INFO kernel=.. shape=..
#                                p50_us=.. best_us=.. melem_s=.. verified=.. err_ratio=..` per case, then
#                                `kbench PASS|FAIL rc=.. cases=.. unverified=..`
#   refuse NAME FILE          -> loads FILE unchecked and launches it: `refuse-NAME PASS|FAIL rc=.. reason=..`
#                                (PASS when the host refused it: exit 8)
#   oob                       -> the out-of-bounds writer with canaries: `oob PASS|FAIL rc=.. report=..`
#   loop                      -> the infinite loop once: `loop PASS|FAIL rc=.. secs=.. error=..` (PASS: exit 9)
#   loop-for SECONDS GROUPS   -> the infinite loop over GROUPS workgroups, again and again for SECONDS:
#                                `loop-for PASS|FAIL launches=.. budget_failures=.. other=..`
#   c-example                 -> the static C example: `c-example PASS|FAIL rc=.. out=..`
#   done                      -> leaves the loop
. /lib/vgpu-test.sh
K=/share/vgpu

jfield() { sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$2" | head -n1; }
jtext() { sed -n "s/^ *\"$1\": *\"\(.*\)\",\{0,1\}\$/\1/p" "$2" | head -n1 | tr ' ,' '__'; }
oneline() { tr '\n' ' ' <"$1" | tr -s ' ' | tr ' ' '_'; }

run_smi() {
    if vgpu-smi --json >/tmp/smi.json 2>/tmp/smi.err; then
        f=/tmp/smi.json
        pass smi "type=$(jfield type $f) policy=$(jfield policy $f) engine=$(jfield engine $f)" \
            "modules=$(jfield guest_modules $f) loop_budget=$(jfield loop_budget $f)" \
            "jobs=$(jfield jobs_completed $f) jobs_failed=$(jfield jobs_failed $f)" \
            "last_failure=$(jtext last_failure $f) refused=$(jfield submits_refused $f)" \
            "busy_ns=$(jfield busy_ns $f) last_refusal=$(jtext last_refusal $f)"
    else
        fail smi "rc=$? $(oneline /tmp/smi.err)"
    fi
}

run_bench() {
    vgpu-smi bench --kernel "$1" --size "$2" --seconds "$3" --json >/tmp/bench.json 2>/tmp/bench.err
    rc=$?
    f=/tmp/bench.json
    detail="rc=$rc kernel=$(jfield kernel $f) size=$(jfield size $f) jobs=$(jfield jobs $f)"
    detail="$detail jps=$(jfield jobs_per_second $f) p50_us=$(jfield p50_us $f) p99_us=$(jfield p99_us $f)"
    detail="$detail verified=$(jfield verified $f) wall=$(jfield wall_seconds $f) $(oneline /tmp/bench.err)"
    if [ "$rc" = 0 ]; then pass bench "$detail"; else fail bench "$detail"; fi
}

run_kbench() {
    vgpu-smi kbench "$@" --json >/tmp/kb.json 2>/tmp/kb.err
    rc=$?
    # One marker per case: the keys of a case come in a fixed order, `failure` last.
    awk '
        /"kernel":/ { gsub(/[",]/, "", $2); k = $2 }
        /"shape":/ { s = $0; sub(/^ *"shape": *"/, "", s); sub(/",? *$/, "", s); gsub(/ /, "_", s) }
        /"load_ms":/ { gsub(/,/, "", $2); l = $2 }
        /"p50_us":/ { gsub(/,/, "", $2); p = $2 }
        /"best_us":/ { gsub(/,/, "", $2); b = $2 }
        /"elements_per_second":/ { gsub(/,/, "", $2); e = $2 }
        /"bytes_per_second":/ { gsub(/,/, "", $2); y = $2 }
        /"verified":/ && k != "" { gsub(/,/, "", $2); v = $2 }
        /"max_error_ratio":/ { gsub(/,/, "", $2); r = $2 }
        /"failure":/ { f = $0; sub(/^ *"failure": */, "", f); gsub(/[ ,]/, "_", f)
            printf "VGPU-TEST: kbench-case INFO kernel=%s shape=%s load_ms=%s p50_us=%s best_us=%s elem_s=%s bytes_s=%s verified=%s err_ratio=%s failure=%s\n", k, s, l, p, b, e, y, v, r, f
            k = "" }
    ' /tmp/kb.json
    cases=$(grep -c '"shape":' /tmp/kb.json)
    bad=$(grep -c '"verified": false' /tmp/kb.json)
    detail="rc=$rc cases=$cases unverified=$bad $(oneline /tmp/kb.err)"
    if [ "$rc" = 0 ] && [ "$cases" -gt 0 ] && [ "$bad" = 0 ]; then pass kbench "$detail"; else fail kbench "$detail"; fi
}

run_refuse() {
    vgpu-smi run "$2" --grid 1 --buf 0:4K --unchecked >/tmp/ref.out 2>/tmp/ref.err
    rc=$?
    detail="rc=$rc reason=$(oneline /tmp/ref.err)"
    if [ "$rc" = 8 ]; then pass "refuse-$1" "$detail"; else fail "refuse-$1" "$detail $(oneline /tmp/ref.out)"; fi
}

# The bound range is bytes 0..1024 of a 1 MiB buffer; the kernel writes every 64 KiB up to 15
# strides on both sides and near index 2^32. Canaries: the rest of that buffer, the other binding.
run_oob() {
    vgpu-smi run $K/oob_write.spv --grid 4 \
        --buf 0:1M:pattern=0xcafef00d:bind=0+1024 --buf 1:64K:pattern=0x5eed5eed \
        --push-u32 16384,15 \
        --expect 0:0+1024=0x600df00d --expect 0:1024+1047552=0xcafef00d \
        --expect 1:0+64K=0x5eed5eed >/tmp/oob.out 2>/tmp/oob.err
    rc=$?
    detail="rc=$rc report=$(oneline /tmp/oob.out) $(oneline /tmp/oob.err)"
    if [ "$rc" = 0 ]; then pass oob "$detail"; else fail oob "$detail"; fi
}

run_loop() {
    t0=$(date +%s)
    vgpu-smi run $K/infinite_loop.spv --grid "${1:-1}" --buf 0:64K >/tmp/loop.out 2>/tmp/loop.err
    rc=$?
    t1=$(date +%s)
    detail="rc=$rc secs=$((t1 - t0)) error=$(oneline /tmp/loop.err)"
    if [ "$rc" = 9 ] && grep -q "loop budget" /tmp/loop.err; then pass loop "$detail"; else fail loop "$detail"; fi
}

run_loop_for() {
    end=$(($(date +%s) + $1))
    n=0 budget=0 other=""
    while [ "$(date +%s)" -lt "$end" ]; do
        vgpu-smi run $K/infinite_loop.spv --grid "$2" --buf 0:64K >/dev/null 2>/tmp/lf.err
        rc=$?
        n=$((n + 1))
        if [ "$rc" = 9 ]; then budget=$((budget + 1)); else other="$other rc=$rc:$(oneline /tmp/lf.err)"; fi
    done
    detail="launches=$n budget_failures=$budget other=${other:-none}"
    if [ "$n" -gt 0 ] && [ "$budget" = "$n" ]; then pass loop-for "$detail"; else fail loop-for "$detail"; fi
}

run_c_example() {
    vgpu-reduce $K/reduce_sum.spv >/tmp/c.out 2>&1
    rc=$?
    detail="rc=$rc out=$(oneline /tmp/c.out)"
    if [ "$rc" = 0 ] && grep -q ", ok " /tmp/c.out; then pass c-example "$detail"; else fail c-example "$detail"; fi
}

if ! wait_until 20 test -c /dev/dri/renderD128; then
    fail render-node "no /dev/dri/renderD128 after 20 s"
    exit 1
fi
pass render-node "$(ls /dev/dri | tr '\n' ' ')"

while host_sync cmd "waiting" 300; do
    set -- $HOST_REPLY
    [ $# -gt 0 ] || { fail cmd "empty command"; break; }
    what=$1
    shift
    case $what in
        smi) run_smi ;;
        bench) run_bench "$@" ;;
        kbench) run_kbench "$@" ;;
        refuse) run_refuse "$@" ;;
        oob) run_oob ;;
        loop) run_loop "$@" ;;
        loop-for) run_loop_for "$@" ;;
        c-example) run_c_example ;;
        done) break ;;
        *) fail cmd "unknown command $what" ;;
    esac
done
# Refused submits are logged by the driver as `response 0x12NN (command 0x207)` (SUBMIT_3D): they are
# what the refuse steps provoke, so they are counted, not failed.
refused=$(dmesg | grep -c -E 'response 0x12[0-9a-f]{2} \(command 0x207\)')
errs=$(dmesg | grep -E 'virtio_gpu.*\*ERROR\*|virtio-gpu.*(timeout|timed out)' | grep -v -E 'response 0x12[0-9a-f]{2} \(command 0x207\)' | head -n 5 | tr '\n' ';')
if [ -z "$errs" ]; then pass drm-errors "refused_submits_logged=$refused"; else fail drm-errors "$errs"; fi
exit $FAILED
