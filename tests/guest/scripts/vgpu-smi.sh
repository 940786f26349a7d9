# Real-guest script driven by the host (busybox sh, run by /init; needs /bin/vgpu-smi in the initramfs):
# waits for the vGPU's render node, then repeatedly asks the host what to do (`cmd READY`) and runs it.
# Results are markers with key=value fields taken from vgpu-smi's JSON (one key per line, so sed
# suffices). Commands (one line from the host):
#   smi                          -> `smi PASS|FAIL type=.. fb_total=.. fb_used=.. policy=.. busy_ns=.. jobs=..
#                                   engine=.. device=..` (device: the device name, spaces and commas as _)
#   memtest                      -> `memtest PASS|FAIL limit=.. fb=.. zeroed=.. allocated=.. buffers=.. passed=..`
#   bench KERNEL SIZE SECONDS    -> `bench PASS|FAIL kernel=.. jobs=.. jps=.. p50_us=.. p99_us=.. verified=.. wall=..`
#   bench-fb KERNEL SIZE SECONDS B G R
#                                -> runs the bench in the background, meanwhile fills /dev/fb0 with one colour
#                                   (decimal B G R), waits 2 s for deferred io and asks the host to look
#                                   (`fb-during-bench READY w=.. h=..`); then reports `fb-during-bench` and `bench`
#   done                         -> leaves the loop
. /lib/vgpu-test.sh

# jfield KEY FILE: the value of "KEY": VALUE in vgpu-smi's pretty JSON (quotes and comma stripped).
jfield() { sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$2" | head -n1; }

# jtext KEY FILE: a free-text "KEY": "VALUE" with spaces and commas turned into _.
jtext() { sed -n "s/^ *\"$1\": *\"\(.*\)\",\{0,1\}\$/\1/p" "$2" | head -n1 | tr ' ,' '__'; }

# run_smi: status JSON to markers.
run_smi() {
    if vgpu-smi --json >/tmp/smi.json 2>/tmp/smi.err; then
        pass smi "type=$(jfield type /tmp/smi.json) fb_total=$(jfield framebuffer_total_bytes /tmp/smi.json)" \
            "fb_used=$(jfield framebuffer_used_bytes /tmp/smi.json) policy=$(jfield policy /tmp/smi.json)" \
            "share=$(jfield share_percent /tmp/smi.json) util=$(jfield utilization_percent /tmp/smi.json)" \
            "active=$(jfield active_vgpus /tmp/smi.json) busy_ns=$(jfield busy_ns /tmp/smi.json)" \
            "jobs=$(jfield jobs_completed /tmp/smi.json) engine=$(jfield engine /tmp/smi.json)" \
            "device=$(jtext device_name /tmp/smi.json)"
    else
        fail smi "rc=$? $(tr '\n' ' ' </tmp/smi.err)"
    fi
}

run_memtest() {
    vgpu-smi memtest --json >/tmp/mem.json 2>/tmp/mem.err
    rc=$?
    f=/tmp/mem.json
    detail="rc=$rc limit=$(jfield limit_bytes $f) fb=$(jfield framebuffer_bytes $f) zeroed=$(jfield zeroed $f)"
    detail="$detail allocated=$(jfield allocated_bytes $f) buffers=$(jfield buffers $f) freed=$(jfield freed $f)"
    detail="$detail passed=$(jfield passed $f) $(tr '\n' ' ' </tmp/mem.err)"
    if [ "$rc" = 0 ]; then pass memtest "$detail"; else fail memtest "$detail"; sed 's/^/[memtest] /' $f; fi
}

# bench_report RC FILE ERRFILE: bench JSON to a marker.
bench_report() {
    f=$2
    detail="rc=$1 kernel=$(jfield kernel $f) size=$(jfield size $f) jobs=$(jfield jobs $f)"
    detail="$detail jps=$(jfield jobs_per_second $f) p50_us=$(jfield p50_us $f) p99_us=$(jfield p99_us $f)"
    detail="$detail verified=$(jfield verified $f) wall=$(jfield wall_seconds $f) $(tr '\n' ' ' <"$3")"
    if [ "$1" = 0 ]; then pass bench "$detail"; else fail bench "$detail"; fi
}

run_bench() {
    vgpu-smi bench --kernel "$1" --size "$2" --seconds "$3" --json >/tmp/bench.json 2>/tmp/bench.err
    bench_report $? /tmp/bench.json /tmp/bench.err
}

# fb_fill B G R: the whole visible framebuffer in one colour, prepared in /tmp/fill.
fb_prepare() {
    fbs=/sys/class/graphics/fb0
    FB_W=$(cut -d, -f1 $fbs/virtual_size); FB_H=$(cut -d, -f2 $fbs/virtual_size)
    stride=$(cat $fbs/stride)
    pixel_file /tmp/fill $((stride / 4 * FB_H)) "$1" "$2" "$3"
}

run_bench_fb() {
    kernel=$1 size=$2 secs=$3
    shift 3
    echo 0 >/sys/class/graphics/fbcon/cursor_blink 2>/dev/null
    fb_prepare "$@"
    vgpu-smi bench --kernel "$kernel" --size "$size" --seconds "$secs" --json >/tmp/bench.json 2>/tmp/bench.err &
    bpid=$!
    sleep 1
    if cat /tmp/fill >/dev/fb0; then
        sleep 2 # deferred io flushes the damage; the bench keeps running meanwhile
        if kill -0 $bpid 2>/dev/null; then running=yes; else running=no; fi
        if host_sync fb-during-bench "w=$FB_W h=$FB_H bgr=$1,$2,$3 bench_running=$running" 60; then
            case $HOST_REPLY in
                "ACK pixels ok"*) pass fb-during-bench "bench_running=$running host: $HOST_REPLY" ;;
                *) fail fb-during-bench "host: $HOST_REPLY" ;;
            esac
        else
            fail fb-during-bench "no answer from the host"
        fi
    else
        fail fb-during-bench "writing /dev/fb0 failed"
    fi
    rm -f /tmp/fill
    wait $bpid
    bench_report $? /tmp/bench.json /tmp/bench.err
}

if ! wait_until 20 test -c /dev/dri/renderD128; then
    fail render-node "no /dev/dri/renderD128 after 20 s"
    exit 1
fi
wait_until 10 test -c /dev/fb0
pass render-node "$(ls /dev/dri | tr '\n' ' ')"

while host_sync cmd "waiting" 180; do
    set -- $HOST_REPLY
    [ $# -gt 0 ] || { fail cmd "empty command"; break; }
    what=$1
    shift
    case $what in
        smi) run_smi ;;
        memtest) run_memtest ;;
        bench) run_bench "$@" ;;
        bench-fb) run_bench_fb "$@" ;;
        done) break ;;
        *) fail cmd "unknown command $what" ;;
    esac
done
errs=$(dmesg | grep -E 'virtio_gpu.*\*ERROR\*|virtio-gpu.*(timeout|timed out)' | grep -v -E 'response 0x1201 \(command 0x204\)|response 0x1203 \(command 0x(106|202|203|102)\)' | head -n 5 | tr '\n' ';')
if [ -z "$errs" ]; then pass drm-errors "none besides memtest's refused probe"; else fail drm-errors "$errs"; fi
exit $FAILED
