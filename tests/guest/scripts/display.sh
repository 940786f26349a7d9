# Real-guest display test (busybox sh, run by /init): virtio-gpu driver, DRM card, EDID modes, fbdev scanout.
. /lib/vgpu-test.sh

# 1. The driver bound and logged its feature line.
if wait_until 15 test -c /dev/dri/card0; then
    pass card0 "$(ls /dev/dri | tr '\n' ' ')"
else
    fail card0 "no /dev/dri/card0 after 15 s"
fi
feat=$(dmesg | grep -m1 '\[drm\] features:')
if [ -n "$feat" ]; then pass driver "${feat#*\] }"; else fail driver "no '[drm] features:' line in dmesg"; fi
dmesg | grep -E '\[drm\]|virtio_gpu|virtio-gpu' | while read -r l; do info dmesg "$l"; done

# 2. EDID modes of the first connector (the configured resolution comes first).
conn=/sys/class/drm/card0-Virtual-1
if wait_until 10 test -s "$conn/modes"; then
    pass modes "status=$(cat $conn/status) first=$(head -n1 $conn/modes) count=$(wc -l <$conn/modes) all=$(tr '\n' ' ' <$conn/modes)"
else
    fail modes "no modes in $conn/modes"
fi

# 3. A pattern written to /dev/fb0 reaches the scanout: the top half holds four vertical bars
#    (red, green, blue, white), the bottom half is solid (R,G,B) = (32,192,160).
fbs=/sys/class/graphics/fb0
if ! wait_until 10 test -c /dev/fb0; then
    fail fb "no /dev/fb0"
    exit 1
fi
w=$(cut -d, -f1 $fbs/virtual_size); h=$(cut -d, -f2 $fbs/virtual_size)
stride=$(cat $fbs/stride); bpp=$(cat $fbs/bits_per_pixel)
info fb "name=$(cat $fbs/name) virtual_size=${w}x${h} stride=$stride bpp=$bpp"
if [ "$bpp" != 32 ] || [ $((stride)) -lt $((w * 4)) ]; then
    fail fb "unsupported layout bpp=$bpp stride=$stride width=$w"
    exit 1
fi
echo 0 >/sys/class/graphics/fbcon/cursor_blink 2>/dev/null
cd /tmp
bar=$((w / 4))
pixel_file red $bar 0 0 255
pixel_file green $bar 0 255 0
pixel_file blue $bar 255 0 0
pixel_file white $((w - 3 * bar)) 255 255 255
head -c $((stride - w * 4)) /dev/zero >pad
cat red green blue white pad >row
repeat_to $((stride * (h / 2))) row top
pixel_file bottom $((stride / 4 * (h - h / 2))) 160 192 32
rm -f red green blue white pad row
if cat top bottom >/dev/fb0; then
    pass fb-write "$((stride * h)) bytes"
else
    fail fb-write "writing /dev/fb0 failed"
fi
rm -f top bottom
sleep 2 # deferred io flushes damage about every 1/HZ; give the host a stable picture
if ! host_sync fb-pattern "w=$w h=$h stride=$stride top=red,green,blue,white bottom=32,192,160" 60; then
    fail fb-pattern "no answer from the host"
elif [ "${HOST_REPLY#ACK pixels ok}" != "$HOST_REPLY" ]; then
    pass fb-pattern "host: $HOST_REPLY"
else
    fail fb-pattern "host: $HOST_REPLY"
fi

# 4. The driver saw no error responses or timeouts along the way.
errs=$(dmesg | grep -E 'virtio_gpu.*\*ERROR\*|virtio-gpu.*(timeout|timed out)' | head -n 5 | tr '\n' ';')
if [ -z "$errs" ]; then pass drm-errors "none"; else fail drm-errors "$errs"; fi
exit $FAILED
