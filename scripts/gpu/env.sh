# Source ON THE GPU MACHINE: put the CUDA libraries that PyTorch's Python packages carry
# (cuBLAS, cuDNN, NVRTC) on LD_LIBRARY_PATH for cudarc, which loads them at run time.
# libcuda.so comes with the driver and is found by the loader already.
# The search walks the whole file system (seconds), so its result is kept in
# /root/devbin/ld-library-path for the later calls on the same (warm) machine.
_cache=/root/devbin/ld-library-path
if [ -s "$_cache" ]; then
    _dirs="$(cat "$_cache")"
else
    _dirs=""
    for lib in 'libcudnn.so*' 'libcublas.so*' 'libnvrtc.so*'; do
        f="$(find / \( -path /proc -o -path /sys \) -prune -o -name "$lib" -print 2>/dev/null | head -n 1)"
        [ -n "$f" ] && _dirs="$_dirs:$(dirname "$f")"
    done
    _dirs="${_dirs#:}"
    mkdir -p /root/devbin 2>/dev/null && [ -n "$_dirs" ] && echo "$_dirs" > "$_cache"
fi
export LD_LIBRARY_PATH="${_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _dirs _cache lib f
