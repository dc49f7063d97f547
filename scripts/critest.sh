#!/usr/bin/env bash
# Runs cri-tools' critest against a silod of its own, end to end, with no outside registry:
#   scripts/critest.sh CRITEST [CRITEST ARGS...]
# It starts Debian's docker-registry on 127.0.0.1, builds stand-ins for every image critest
# names (from the built-in busybox, with the property each spec checks), pushes them under the
# same paths, starts silod with that registry as the mirror of gcr.io and registry.k8s.io,
# writes the test-images file, runs critest against that silod's CRI socket, and removes
# everything it made. The last lines are critest's own summary. See docs/kubernetes.md.
set -uo pipefail

CRITEST=${1:?usage: scripts/critest.sh CRITEST [ARGS...]}
shift
CRITEST=$(readlink -f "$CRITEST")
PREFIX=${SILOBOX_PREFIX:-/opt/silobox}
PY="$PREFIX/bin/python"
SRC=$(cd "$(dirname "$0")/.." && pwd)
REGISTRY_BIN=${REGISTRY_BIN:-/usr/bin/docker-registry}
[ "$(id -u)" = 0 ] || { echo "critest.sh: run as root" >&2; exit 1; }
[ -x "$REGISTRY_BIN" ] || { echo "critest.sh: needs docker-registry (apt-get install docker-registry)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/sct.XXXXXX)   # short: shim socket paths live under it
touch "$WORK/.started"
RUN_ID=$(basename "$WORK" | tr -dc 'a-zA-Z0-9' | tail -c 8)
ROOT="$WORK/root"; EXEC="$WORK/r"; SOCK="$EXEC/silod.sock"; CRI="$EXEC/cri.sock"
CGROUP="silobox/critest$RUN_ID"
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
REG="127.0.0.1:$PORT"
REG_PID=""; SILOD_PID=""

cleanup() {
    if [ -n "$SILOD_PID" ] && kill -0 "$SILOD_PID" 2>/dev/null; then
        # remove every pod and container this run left, then stop silod
        for id in $(SILOBOX_HOST="unix://$SOCK" "$PY" -m silobox.cli.main ps -aq 2>/dev/null); do
            SILOBOX_HOST="unix://$SOCK" "$PY" -m silobox.cli.main rm -f "$id" >/dev/null 2>&1
        done
        kill -TERM "$SILOD_PID"; wait "$SILOD_PID" 2>/dev/null
    fi
    [ -n "$REG_PID" ] && kill -TERM "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
    for d in /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP"; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null
    done
    grep -o " $WORK[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
    # critest's mount propagation specs bind /tmp/test<pod id>/mnt onto itself and leave it
    # when a spec fails before its own cleanup: those made during this run go too
    find /tmp -maxdepth 1 -name 'test*' -type d -newer "$WORK/.started" 2>/dev/null |
        grep -E '^/tmp/test[0-9a-f]{64}' | while read -r d; do
            for _ in 1 2 3 4; do   # stacked mounts: one layer a time
                grep -o " $d/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do
                    umount -l "$m"; done
            done
            grep -q " $d/" /proc/self/mounts || rm -rf --one-file-system "$d"
        done
    rm -rf "$WORK"
}
trap cleanup EXIT

# -- the registry ---------------------------------------------------------------------------------
mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<EOF
{"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": true}},
 "storage": {"filesystem": {"rootdirectory": "$WORK/registry/storage"}, "delete": {"enabled": true}},
 "http": {"addr": "$REG", "secret": "$RUN_ID"}}
EOF
"$REGISTRY_BIN" serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
REG_PID=$!

# -- silod ----------------------------------------------------------------------------------------
# The registries critest names are mirrored by the local one: pulls go there, and images keep
# the names critest asked for (silobox/cri/images.py).
export SILOBOX_CRI_REGISTRY_MIRRORS="gcr.io=$REG,registry.k8s.io=$REG"
(cd "$SRC" && exec "$PY" -m silobox.daemon --root "$ROOT" --exec-root "$EXEC" \
    --cgroup-parent "$CGROUP" -H "unix://$SOCK" --registry-loopback-only) >"$WORK/silod.log" 2>&1 &
SILOD_PID=$!
for _ in $(seq 200); do [ -S "$CRI" ] && break; sleep 0.1; done
[ -S "$CRI" ] || { echo "critest.sh: silod did not start:"; tail -20 "$WORK/silod.log"; exit 1; }
silo() { SILOBOX_HOST="unix://$SOCK" "$PY" -m silobox.cli.main "$@"; }

# -- stand-in images ------------------------------------------------------------------------------
# build NAME DOCKERFILE-LINES...: an image FROM the built-in busybox, pushed to the registry.
build() {
    local name=$1; shift
    local ctx="$WORK/ctx/$(echo "$name" | tr '/:@' '___')"
    mkdir -p "$ctx"
    { echo "FROM busybox"; printf '%s\n' "$@"; } > "$ctx/Dockerfile"
    silo build -q -t "$REG/$name" "$ctx" >/dev/null || { echo "critest.sh: build of $name failed" >&2; exit 1; }
    silo push "$REG/$name" >/dev/null || { echo "critest.sh: push of $name failed" >&2; exit 1; }
}
WEB='RUN mkdir -p /www && echo "<html><body>It works!</body></html>" > /www/index.html'

# upstream_sh DEST: busybox's ash as the upstream busybox image has it, which runs other
# commands by exec'ing them. Debian's busybox-static prefers its own applets: its sh runs `ls`
# in-process, so a masked /bin/ls (the MaskedPaths spec) is never exec'd. Built statically
# from Debian's busybox source (apt-get source through private lists: the host's apt
# configuration is not touched), allnoconfig + ash and the shell features of busybox's
# defconfig (echo -n, printf, test, arithmetic...); cached by version and options.
upstream_sh() {
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/silobox" src="$WORK/busybox-src"
    local opts="STATIC ASH SH_IS_ASH ASH_BASH_COMPAT ASH_ECHO ASH_PRINTF ASH_TEST ASH_GETOPTS
                ASH_CMDCMD ASH_ALIAS ASH_JOB_CONTROL ASH_INTERNAL_GLOB ASH_RANDOM_SUPPORT
                ASH_EXPAND_PRMT FEATURE_FANCY_ECHO FEATURE_SH_MATH FEATURE_SH_MATH_64
                FEATURE_SH_READ_FRAC FEATURE_TEST_64 FEATURE_EDITING LONG_OPTS"
    local ver; ver=$(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null | tr ':+~' '___')
    ver="$ver-$(echo $opts | cksum | cut -d' ' -f1)"
    if [ ! -x "$cache/ash-$ver" ]; then
        mkdir -p "$src/lists/partial" "$src/cache" "$cache"
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
             "http://deb.debian.org/debian bookworm main" > "$src/sources.list"
        local apt=(-q -o APT::Sandbox::User=root -o Dir::Etc::SourceList="$src/sources.list"
                   -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists="$src/lists"
                   -o Dir::Cache="$src/cache")
        (cd "$src" && apt-get "${apt[@]}" update >/dev/null 2>&1 &&
            apt-get "${apt[@]}" source --download-only busybox >/dev/null 2>&1 &&
            tar xjf busybox_*.orig.tar.bz2) || return 1
        (cd "$src"/busybox-*/ && make -s allnoconfig >/dev/null 2>&1 &&
            for o in $opts; do
                sed -i "s/^# CONFIG_$o is not set/CONFIG_$o=y/" .config
            done &&
            yes "" | make -s oldconfig >/dev/null 2>&1 &&
            make -s -j"$(nproc)" busybox >/dev/null 2>&1 &&
            cp busybox "$cache/ash-$ver.tmp" && mv "$cache/ash-$ver.tmp" "$cache/ash-$ver") || return 1
    fi
    cp "$cache/ash-$ver" "$1"
}

# The upstream busybox image has its applets as hard links, a shell that exec's them and
# pgrep/ipcs applets that Debian's busybox-static lacks: the stand-in copies /bin/ls (a
# masked-path spec masks it), takes the upstream shell, and adds small pgrep and ipcs programs.
mkdir -p "$WORK/ctx/e2e-busybox"
SH_LINE='RUN ["/bin/busybox", "mv", "/bin/sh.upstream", "/bin/sh"]'
if ! upstream_sh "$WORK/ctx/e2e-busybox/sh.upstream"; then
    echo "critest.sh: could not build busybox's ash from Debian's source; the busybox stand-in" \
         "keeps Debian's sh (the MaskedPaths spec then fails)" >&2
    cp /bin/busybox "$WORK/ctx/e2e-busybox/sh.upstream" 2>/dev/null || : > "$WORK/ctx/e2e-busybox/sh.upstream"
    SH_LINE='RUN rm /bin/sh.upstream'
fi
cat > "$WORK/ctx/e2e-busybox/pgrep" <<'EOF_PGREP'
#!/bin/sh
ps -o pid,args | awk -v p="$1" 'NR > 1 && $0 !~ /pgrep|awk/ && $2 ~ p { print $1; n++ } END { exit n ? 0 : 1 }'
EOF_PGREP
cat > "$WORK/ctx/e2e-busybox/ipcs" <<'EOF_IPCS'
#!/bin/sh
echo; echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
awk 'NR > 1 { printf "0x%08x %-10s %-10s %-10s %-10s %-10s\n", $1, $2, $8, $3, $4, $7 }' /proc/sysvipc/shm
EOF_IPCS
cat > "$WORK/ctx/e2e-busybox/Dockerfile" <<EOF_DF
FROM busybox
COPY pgrep ipcs sh.upstream /bin/
RUN chmod 755 /bin/pgrep /bin/ipcs /bin/sh.upstream && rm /bin/ls && cp /bin/busybox /bin/ls
$SH_LINE
EOF_DF
silo build -q -t "$REG/e2e-test-images/busybox:1.29-2" "$WORK/ctx/e2e-busybox" >/dev/null \
    || { echo "critest.sh: build of the busybox stand-in failed" >&2; exit 1; }
for t in 1.29-2 latest; do
    silo tag "$REG/e2e-test-images/busybox:1.29-2" "$REG/e2e-test-images/busybox:$t"
    silo push "$REG/e2e-test-images/busybox:$t" >/dev/null
done
build e2e-test-images/httpd:2.4.39-4 "$WEB" \
    'CMD ["sh", "-c", "echo \"[core:notice] Command line: '"'"'httpd -D FOREGROUND'"'"'\"; exec httpd -f -v -p 80 -h /www"]'
# The nginx stand-in: a small program named nginx (as pidof finds it) whose command line says
# "master process" and which writes nginx's pid file, then serves with busybox httpd as its
# child: the PID namespace specs look for all three.
mkdir -p "$WORK/ctx/nginx"
cat > "$WORK/ctx/nginx/nginx.c" <<'EOF_NGINX'
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static pid_t child;
static void pass(int sig) { if (child > 0) kill(child, sig); }
int main(void)
{
    FILE *f = fopen("/var/run/nginx.pid", "w");
    if (f) { fprintf(f, "%d\n", (int)getpid()); fclose(f); }
    signal(SIGTERM, pass);
    signal(SIGINT, pass);
    child = fork();
    if (child == 0) {
        execlp("httpd", "httpd", "-f", "-p", "80", "-h", "/www", (char *)0);
        _exit(127);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0) ;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
EOF_NGINX
gcc -static -O2 -o "$WORK/ctx/nginx/nginx" "$WORK/ctx/nginx/nginx.c" || { echo "critest.sh: gcc failed" >&2; exit 1; }
cat > "$WORK/ctx/nginx/Dockerfile" <<'EOF_DF'
FROM busybox
COPY nginx /usr/sbin/nginx
RUN mkdir -p /var/run /www && echo "<html><body>It works!</body></html>" > /www/index.html
CMD ["/usr/sbin/nginx", "-g", "master process"]
EOF_DF
silo build -q -t "$REG/e2e-test-images/nginx:1.14-2" "$WORK/ctx/nginx" >/dev/null \
    || { echo "critest.sh: build of the nginx stand-in failed" >&2; exit 1; }
for t in 1.14-2 latest; do
    silo tag "$REG/e2e-test-images/nginx:1.14-2" "$REG/e2e-test-images/nginx:$t"
    silo push "$REG/e2e-test-images/nginx:$t" >/dev/null
done
build "k8s-staging-cri-tools/hostnet-nginx-$(dpkg --print-architecture):latest" "$WEB" \
    'CMD ["httpd", "-f", "-p", "12003", "-h", "/www"]'
for n in 1 2 3; do build "k8s-staging-cri-tools/test-image-$n:latest" "LABEL n=$n"; done
build k8s-staging-cri-tools/test-image-tags:1 'LABEL tags=same'
silo tag "$REG/k8s-staging-cri-tools/test-image-tags:1" "$REG/k8s-staging-cri-tools/test-image-tags:2"
silo tag "$REG/k8s-staging-cri-tools/test-image-tags:1" "$REG/k8s-staging-cri-tools/test-image-tags:3"
silo push "$REG/k8s-staging-cri-tools/test-image-tags:2" >/dev/null
silo push "$REG/k8s-staging-cri-tools/test-image-tags:3" >/dev/null
build k8s-staging-cri-tools/test-image-latest:latest 'LABEL t=latest'
build k8s-staging-cri-tools/test-image-tag:test 'LABEL t=test'
build k8s-staging-cri-tools/test-image-tag:all 'LABEL t=all'
build k8s-staging-cri-tools/test-image-user-uid:latest 'USER 1002'
build k8s-staging-cri-tools/test-image-user-username:latest 'USER www-data'
build k8s-staging-cri-tools/test-image-user-uid-group:latest 'USER 1003:users'
build k8s-staging-cri-tools/test-image-user-username-group:latest 'USER www-data:users'
build k8s-staging-cri-tools/test-image-predefined-group:latest \
    'RUN echo "tester:x:1000:1000::/home/tester:/bin/sh" >> /etc/passwd && echo "tester:x:1000:" >> /etc/group && echo "supplementary:x:50000:tester" >> /etc/group' \
    'USER 1000'
# nonewprivs: a set-user-id root program that prints its effective uid.
mkdir -p "$WORK/ctx/nnp"
printf '#include <stdio.h>\n#include <unistd.h>\nint main(void){printf("Effective uid: %%d\\n",(int)geteuid());return 0;}\n' > "$WORK/ctx/nnp/nnp.c"
gcc -static -O2 -o "$WORK/ctx/nnp/nnp" "$WORK/ctx/nnp/nnp.c" || { echo "critest.sh: gcc failed" >&2; exit 1; }
printf 'FROM busybox\nCOPY nnp /nnp\nRUN chmod 4755 /nnp\nCMD ["/nnp"]\n' > "$WORK/ctx/nnp/Dockerfile"
silo build -q -t "$REG/e2e-test-images/nonewprivs:1.3" "$WORK/ctx/nnp" >/dev/null
silo push "$REG/e2e-test-images/nonewprivs:1.3" >/dev/null
silo tag "$REG/e2e-test-images/nonewprivs:1.3" "$REG/e2e-test-images/nonewprivs:latest"
silo push "$REG/e2e-test-images/nonewprivs:latest" >/dev/null

# silod starts critest with none of these: every spec pulls what it uses, through the mirror.
for id in $(silo images -q | sort -u); do silo rmi -f "$id" >/dev/null 2>&1; done

cat > "$WORK/test-images.yaml" <<EOF
defaultTestContainerImage: registry.k8s.io/e2e-test-images/busybox:1.29-2
webServerTestImage: registry.k8s.io/e2e-test-images/nginx:1.14-2
EOF

# -- critest --------------------------------------------------------------------------------------
# The digest-pinned spec names an upstream manifest digest that no stand-in can have.
"$CRITEST" --runtime-endpoint "unix://$CRI" --image-endpoint "unix://$CRI" \
    --test-images-file "$WORK/test-images.yaml" \
    -ginkgo.skip 'image with digest' -ginkgo.no-color "$@" 2>&1 | tee "$WORK/critest.log" | grep -vE '^\s*$' \
    | grep -E '^(•|S|\[Fail\]|\[FAIL\]|Summarizing|Ran |FAIL|PASS|  /)|Failure \[' || true
rc=${PIPESTATUS[0]}
cp "$WORK/critest.log" "${CRITEST_LOG:-/tmp/silobox-critest.log}"
grep -E '^Ran [0-9]+ of [0-9]+ Specs' "$WORK/critest.log" | tail -1
grep -E '(Passed|Failed).*\|' "$WORK/critest.log" | tail -1
exit "$rc"
