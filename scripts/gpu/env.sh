# Source ON THE GPU MACHINE: put the CUDA libraries that PyTorch's Python packages carry
# (cuBLAS, cuDNN, NVRTC) on LD_LIBRARY_PATH for cudarc, which loads them at run time.
# libcuda.so comes with the driver and is found by the loader already.
# The search takes seconds, so its result is kept in /root/devbin/ld-library-path for the
# later calls on the same (warm) machine.
#
# Never a `stubs` folder: the CUDA toolkit's link-time stubs (libcuda.so, libcublas.so, ...)
# load but do nothing, and cudarc tries the unversioned libX.so name before the versioned
# ones. The versioned names are looked for first (cuDNN 9, cuBLAS 13, NVRTC 13).
_cache="${GPU_ROOT:-/root}/devbin/ld-library-path"
# Where to look, in order (find walks its roots in the order given): the `nvidia` packages of
# the Python that holds PyTorch (the libraries PyTorch itself uses), then the usual places.
_roots=()
_nv="$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null)"
[ -d "$_nv" ] && _roots+=("$_nv")
for _r in /usr/local /opt /usr/lib /usr/lib64 /root; do [ -d "$_r" ] && _roots+=("$_r"); done
_find_lib() {
    find "${_roots[@]}" \( -path '*/stubs' -o -path /proc -o -path /sys \) -prune \
        -o -name "$1" -print 2>/dev/null | head -n 1
}
if [ -s "$_cache" ]; then
    _dirs="$(cat "$_cache")"
else
    _dirs=""
    for _pair in 'libcudnn.so.9 libcudnn.so' 'libcublas.so.13 libcublas.so' 'libnvrtc.so.13 libnvrtc.so'; do
        read -r _versioned _plain <<< "$_pair"
        _f="$(_find_lib "$_versioned*")"
        [ -n "$_f" ] || _f="$(_find_lib "$_plain*")"
        [ -n "$_f" ] || { echo "env.sh: no $_plain* found (outside stubs/ folders)" >&2; continue; }
        case ":$_dirs:" in *":$(dirname "$_f"):"*) ;; *) _dirs="$_dirs:$(dirname "$_f")" ;; esac
    done
    _dirs="${_dirs#:}"
    mkdir -p "$(dirname "$_cache")" 2>/dev/null && [ -n "$_dirs" ] && echo "$_dirs" > "$_cache"
fi
export LD_LIBRARY_PATH="${_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset -f _find_lib
unset _dirs _cache _pair _versioned _plain _f _roots _nv _r
