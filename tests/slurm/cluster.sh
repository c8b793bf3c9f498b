#!/bin/bash
# Stand up / tear down a real single-node SLURM 22.05 cluster (Debian 12 packages)
# for the SLURM executor tests and CI.
#
#   tests/slurm/cluster.sh start STATE_DIR   install (if missing), configure, start, smoke-test
#   tests/slurm/cluster.sh stop  STATE_DIR   stop what STATE_DIR/pids/ recorded
#
# Everything (configs, munge key, MariaDB datadir, spool, logs, pids) lives in
# STATE_DIR. Clients find the cluster through SLURM_CONF, written to STATE_DIR/env.sh
# (. STATE_DIR/env.sh; sinfo), and through /etc/slurm/slurm.conf, a link to STATE_DIR's
# made while the cluster runs: the srun that runs each Snakemake job inside its
# allocation gets no SLURM_CONF (the jobstep plugin strips SLURM_* from its
# environment), so it reads the default path, as on a real cluster. A machine with its
# own /etc/slurm/slurm.conf is not touched: start then skips (exit 77).
#
# `start` does nothing unless TRTFLOW_TEST_SLURM=1 (it changes the system: .ci/run sets it).
#
# Exit status of `start`: 0 cluster up; 77 not asked for (TRTFLOW_TEST_SLURM) or packages
# cannot be installed (one line on stderr says why, so a test can skip); anything else: real
# failure (log tails shown).
#
# All daemons run as root in the foreground (-D / -F) and are backgrounded here, with
# stdin/stdout/stderr redirected, so that a caller that captures our output (pytest's
# subprocess.run) does not hang waiting for a pipe the daemons hold open.
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)   # sacct/sacctmgr: slurm-client (dependency)
CLUSTER=trtflow
ACCOUNT=trtflow
START_TIMEOUT=${SLURM_CLUSTER_TIMEOUT:-90}           # seconds, per wait

say() { echo "cluster.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
skip() { say "SKIP: $*"; exit 77; }

# EXIT trap: never leave our policy-rc.d behind; after a failed start show the logs
# and stop what was started (the logs stay in STATE_DIR).
OWN_POLICY=
STARTING=0
on_exit() {
    local rc=$?
    [[ -n $OWN_POLICY ]] && rm -f "$OWN_POLICY"
    if ((rc != 0 && STARTING)); then
        show_logs
        stop_cluster
    fi
    return "$rc"
}
trap on_exit EXIT

# ---------------------------------------------------------------- installation

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

# PIDs of processes running one of the daemon binaries (used only to find what the
# packages' maintainer scripts may have started during *our* install).
daemon_pids() {
    local d exe
    for d in /proc/[0-9]*; do
        exe=$(readlink "$d/exe" 2>/dev/null) || continue
        case "$exe" in
            */munged|*/mariadbd|*/mysqld|*/slurmdbd|*/slurmctld|*/slurmd) echo "${d#/proc/}" ;;
        esac
    done
}

install_packages() {
    local missing
    missing=$(missing_packages | tr '\n' ' ')
    [[ -z "${missing// /}" ]] && return 0
    command -v apt-get >/dev/null || skip "packages missing ($missing) and no apt-get to install them"
    [[ $EUID -eq 0 ]] || skip "packages missing ($missing) and not root, cannot apt-get install"

    # Debian postinsts start daemons through invoke-rc.d; a policy-rc.d exiting 101
    # forbids that (we start our own instances).  Only ours is removed afterwards.
    local policy=/usr/sbin/policy-rc.d before t0
    if [[ ! -e $policy ]]; then
        OWN_POLICY=$policy
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
    fi
    before=$(daemon_pids | sort)
    t0=$SECONDS
    say "installing $missing(apt-get update + install)"
    local rc=0 out
    out=$(export DEBIAN_FRONTEND=noninteractive
          apt-get update -qq 2>&1 &&
          apt-get install -y -qq --no-install-recommends \
              -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
              "${PACKAGES[@]}" 2>&1) || rc=$?
    if [[ -n $OWN_POLICY ]]; then rm -f "$OWN_POLICY"; OWN_POLICY=; fi
    # Anything a maintainer script started anyway (e.g. via systemd on a real host)
    # would fight over ports/sockets with ours: stop exactly those new PIDs.
    local pid
    for pid in $(comm -13 <(echo "$before") <(daemon_pids | sort)); do
        say "stopping daemon pid $pid started by package install"
        kill -TERM "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        skip "apt-get could not install ${missing}(no network/mirror?): $(grep -E '^(E|W|Err):' <<<"$out" | tail -n 1)"
    fi
    say "apt install took $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- helpers

# A TCP port nobody listens on, starting from $1 (reads /proc/net/tcp{,6}: no deps).
listening_ports() {
    local local_addr state
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        while read -r _ local_addr _ state _; do
            [[ $state == 0A ]] && echo $((16#${local_addr##*:}))
        done
}
free_port() {
    local p=$1 used
    used=$(listening_ports)
    while grep -qx "$p" <<<"$used"; do p=$((p + 1)); done
    echo "$p"
}

# start_daemon NAME CMD...: run CMD in its own session (so it outlives us and a
# Ctrl-C to the caller's process group), output to log/NAME.out, PID to pids/NAME.pid.
# The marker variable lets `stop` find leftovers of *this* cluster (e.g. slurmstepd).
start_daemon() {
    local name=$1; shift
    TRTFLOW_SLURM_STATE=$STATE SLURM_CONF=$STATE/slurm.conf \
        setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
    echo $! >"$STATE/pids/$name.pid"
}

alive() { local f=$STATE/pids/$1.pid; [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; }

# wait_for NAME DESCRIPTION CMD...: poll CMD until it succeeds; fail if NAME died.
wait_for() {
    local name=$1 what=$2 deadline=$((SECONDS + START_TIMEOUT)); shift 2
    until "$@" >/dev/null 2>&1; do
        alive "$name" || die "$name exited while waiting for $what"
        ((SECONDS < deadline)) || die "timed out after ${START_TIMEOUT}s waiting for $what"
        sleep 0.3
    done
}

show_logs() {
    [[ -n "${STATE:-}" && -d "$STATE/log" ]] || return 0
    local f
    for f in "$STATE"/log/*; do
        [[ -s $f ]] || continue
        echo "----- tail $f" >&2
        tail -n 25 "$f" >&2
    done
}

# ---------------------------------------------------------------- daemons

start_munged() {
    # Own key (mode 0600, owned by root, which munged checks); own socket given to
    # slurm via AuthInfo=socket=..., so the system's /run/munge is not needed.
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$STATE/munge/munge.key"
    # --force: munged is picky about parent-dir permissions (e.g. /tmp); this is a
    # throw-away test cluster, so warnings instead of refusing to start.
    # --origin: otherwise munged resolves the hostname (may not resolve on CI).
    # In the foreground it logs to stderr, i.e. log/munged.out.
    start_daemon munged /usr/sbin/munged --foreground --force --origin=127.0.0.1 \
        --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed"
    wait_for munged "munged socket" bash -c \
        "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
}

start_mariadb() {
    # Private instance: own datadir/socket/port, no /etc/mysql config (--no-defaults).
    mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$STATE/log/mariadb-install-db.log" 2>&1 \
        || die "mariadb-install-db failed"
    start_daemon mariadb /usr/sbin/mariadbd --no-defaults --user=root \
        --datadir="$STATE/mysql" --socket="$MYSQL_SOCKET" --pid-file="$STATE/mysql.pid" \
        --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$STATE/log/mariadb.log" \
        --innodb-buffer-pool-size=128M --innodb-log-file-size=48M \
        --innodb-lock-wait-timeout=900 --max-allowed-packet=64M
    wait_for mariadb "mariadb" mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" ping
    # root connects through the unix socket (socket auth); slurmdbd gets a TCP user.
    mariadb --no-defaults --socket="$MYSQL_SOCKET" -u root <<SQL || die "creating slurm database failed"
CREATE DATABASE slurm_acct_db;
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

start_slurmdbd() {
    start_daemon slurmdbd /usr/sbin/slurmdbd -D
    wait_for slurmdbd "slurmdbd" sacctmgr -n list cluster
    # The cluster must exist in the database before slurmctld registers, otherwise
    # jobs are not recorded and sacct stays empty.  Root gets a real association
    # (default account trtflow) so sacct/sacctmgr-based account lookups succeed.
    sacctmgr -i >"$STATE/log/sacctmgr.log" 2>&1 <<EOF || die "sacctmgr setup failed"
add cluster $CLUSTER
add account $ACCOUNT Cluster=$CLUSTER Description=$ACCOUNT Organization=$ACCOUNT
add user root Account=$ACCOUNT Cluster=$CLUSTER
modify user root set DefaultAccount=$ACCOUNT
EOF
}

start_slurmctld() {
    # -c: start from a clean state (we always start with a fresh StateSaveLocation).
    start_daemon slurmctld /usr/sbin/slurmctld -D -c
    wait_for slurmctld "slurmctld" scontrol ping
}

start_slurmd() {
    start_daemon slurmd /usr/sbin/slurmd -D -N "$HOST"
    wait_for slurmd "node $HOST idle" bash -c "sinfo -h -n '$HOST' -o %T | grep -qx idle"
}

smoke_test() {
    local id state deadline=$((SECONDS + START_TIMEOUT))
    # srun inside the job without SLURM_CONF, as the jobstep plugin runs it
    id=$(sbatch --parsable -o "$STATE/log/smoke.out" --wrap 'env -u SLURM_CONF srun -n1 true' 2>&1) ||
        die "sbatch failed: $id"
    id=${id%%;*}
    while :; do
        state=$(sacct -j "$id" -X -n -o State 2>/dev/null | tr -d ' ')
        [[ $state == COMPLETED ]] && break
        [[ $state =~ ^(FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL) ]] &&
            die "smoke-test job $id ended $state"
        ((SECONDS < deadline)) || die "smoke-test job $id not COMPLETED in sacct (state '$state')"
        sleep 0.5
    done
}

# ---------------------------------------------------------------- configuration

write_configs() {
    local ncpu mem_mb real_mem def_mem
    ncpu=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
    real_mem=$((mem_mb * 9 / 10))                     # "a bit under" the real memory
    def_mem=$((real_mem / ncpu < 1024 ? real_mem / ncpu : 1024))

    # Fake GPU: /dev/null as the device file makes --gpus=1 / --gres=gpu:1 schedulable.
    cat >"$STATE/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
EOF
    : >"$STATE/plugstack.conf"    # keep slurm away from /etc/slurm/plugstack.conf

    cat >"$STATE/slurm.conf" <<EOF
# Generated by tests/slurm/cluster.sh: single-node test cluster, everything as root.
ClusterName=$CLUSTER
# NodeAddr/SlurmctldHost addresses: no reliance on the hostname resolving.
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$RUN/slurmd
SlurmctldPidFile=$STATE/spool/slurmctld.pid
SlurmdPidFile=$STATE/spool/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$STATE/plugstack.conf
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
# No cgroups inside containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$def_mem
# Trust this file's node description even if the hardware probe differs (no DRAIN).
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For the slurmdbd connection AuthInfo is NOT used: this is the munge socket there.
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$real_mem Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

    # slurmdbd reads slurmdbd.conf next to $SLURM_CONF; it must be 0600 (has a password).
    cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/spool/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$STATE/slurmdbd.conf"

    {
        echo "# Source this to talk to the test cluster (sbatch, sacct, squeue, sinfo, scontrol)."
        printf 'export SLURM_CONF=%q\n' "$STATE/slurm.conf"
    } >"$STATE/env.sh"
}

# ---------------------------------------------------------------- stop

# ours PID: does PID still run a process started for this STATE_DIR?  (Guards against
# PID reuse, e.g. after a reboot: we never signal a process that is not ours.)
ours() {
    kill -0 "$1" 2>/dev/null &&
        tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" | grep -qxF "TRTFLOW_SLURM_STATE=$STATE"
}

# stop_pids PID...: TERM them all, wait up to 10 s for them to exit, then KILL.
stop_pids() {
    local pid left i
    left=()
    for pid in "$@"; do ours "$pid" && kill -TERM "$pid" 2>/dev/null && left+=("$pid"); done
    for ((i = 0; i < 100 && ${#left[@]}; i++)); do
        sleep 0.1
        for pid in "${!left[@]}"; do kill -0 "${left[pid]}" 2>/dev/null || unset "left[pid]"; done
    done
    for pid in "${left[@]}"; do
        say "pid $pid ($(cat /proc/"$pid"/comm 2>/dev/null)) ignored TERM, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# stop_daemons NAME...: stop (together) the daemons recorded in pids/NAME.pid.
stop_daemons() {
    local name pids=()
    for name in "$@"; do
        [[ -s "$STATE/pids/$name.pid" ]] && pids+=("$(cat "$STATE/pids/$name.pid")")
        rm -f "$STATE/pids/$name.pid"
    done
    stop_pids "${pids[@]}"
}

SYSTEM_CONF=/etc/slurm/slurm.conf

# The default config path points at ours while the cluster runs (see the header).
link_system_conf() {
    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]] && [[ $(readlink "$SYSTEM_CONF") != "$SYSTEM_CONF_LINK" ]]; then
        STARTING=0
        skip "this machine has its own $SYSTEM_CONF (a cluster of its own?); not replacing it"
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$SYSTEM_CONF_LINK" "$SYSTEM_CONF"
}

unlink_system_conf() {
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$SYSTEM_CONF_LINK" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

stop_cluster() {
    unlink_system_conf
    # A socket dir outside STATE_DIR (see choose_paths) is ours to remove.
    if [[ -s "$STATE/rundir" ]]; then rm -rf "$(cat "$STATE/rundir")"; rm -f "$STATE/rundir"; fi
    [[ -d "$STATE/pids" ]] || return 0
    # Cancel jobs first so slurmd can clean up their processes (no cgroups here).
    if alive slurmctld && [[ -f "$STATE/slurm.conf" ]]; then
        local jobs
        mapfile -t jobs < <(SLURM_CONF=$STATE/slurm.conf timeout 10 squeue -h -o %i 2>/dev/null)
        if ((${#jobs[@]})); then
            SLURM_CONF=$STATE/slurm.conf timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
            local i
            for ((i = 0; i < 50; i++)); do       # up to 10 s for them to be gone
                [[ -z $(SLURM_CONF=$STATE/slurm.conf timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    # Reverse start order, in stages (each daemon needs the ones after it while it
    # shuts down: slurmctld flushes to slurmdbd, which needs mariadb; all need munge).
    stop_daemons slurmd slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadb munged
    # Leftovers of this cluster only (slurmstepd inherits slurmd's marker variable).
    local d pids=()
    for d in /proc/[0-9]*; do
        [[ ${d#/proc/} != "$$" ]] && ours "${d#/proc/}" && pids+=("${d#/proc/}")
    done
    stop_pids "${pids[@]}"
}

# ---------------------------------------------------------------- main

choose_paths() {
    HOST=$(hostname -s 2>/dev/null || uname -n | cut -d. -f1)
    # RUN holds every unix socket: munge's, mariadb's, and slurmd's spool dir (where
    # slurmstepd creates RUN/slurmd/<host>_<jobid>.<stepid>).  Socket paths are limited
    # to 107 bytes, so for a long STATE_DIR (deep pytest tmp_path) use a short dir in /tmp.
    RUN=$STATE/run
    if (( ${#RUN} + ${#HOST} + 40 > 107 )); then
        RUN=$(mktemp -d /tmp/slurm-run.XXXXXX)
        echo "$RUN" >"$STATE/rundir"
    fi
    mkdir -p "$RUN/slurmd"
    chmod 755 "$RUN"        # munged wants its socket dir searchable by all
    MUNGE_SOCKET=$RUN/munge.socket
    MYSQL_SOCKET=$RUN/mysqld.sock
    # Each search starts above the previous pick, so the four never collide.
    CTLD_PORT=$(free_port 6817)
    SLURMD_PORT=$(free_port $((CTLD_PORT + 1)))
    DBD_PORT=$(free_port $((SLURMD_PORT + 1)))
    MYSQL_PORT=$(free_port 3307)
    DB_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
}

cmd_start() {
    local t0=$SECONDS
    # It changes the system (packages, daemons as root, a link in /etc/slurm): only when asked,
    # as .ci/run asks; the tests skip with this line otherwise.
    [[ ${TRTFLOW_TEST_SLURM:-} == 1 ]] ||
        skip "TRTFLOW_TEST_SLURM=1 not set: starting a SLURM cluster apt-installs ${PACKAGES[*]} (as root) and starts munged, mariadbd, slurmdbd, slurmctld and slurmd"
    install_packages
    local t1=$SECONDS
    stop_cluster                                 # whatever a previous run left behind
    STARTING=1                                   # from here on, a failure stops it all
    # Fresh cluster every time: remove only what this script creates.
    rm -rf "$STATE"/{pids,log,spool,run,munge,mysql} "$STATE"/{slurm.conf,slurmdbd.conf,gres.conf,plugstack.conf,env.sh,mysql.pid}
    mkdir -p "$STATE"/{pids,log,munge,spool/slurmctld}
    chmod 700 "$STATE/munge"
    choose_paths
    write_configs
    link_system_conf
    export SLURM_CONF=$STATE/slurm.conf
    start_munged
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    smoke_test
    STARTING=0
    say "cluster '$CLUSTER' up on $HOST (start $((SECONDS - t1)) s, total $((SECONDS - t0)) s); . $STATE/env.sh"
}

main() {
    [[ $# -eq 2 && ( $1 == start || $1 == stop ) ]] || { echo "usage: $0 start|stop STATE_DIR" >&2; exit 2; }
    [[ $1 == stop && ! -d $2 ]] && exit 0
    mkdir -p "$2"
    STATE=$(cd "$2" && pwd -P)
    # The path goes unquoted into slurm.conf and friends.
    [[ $STATE != *[[:space:]\'\"]* ]] || die "STATE_DIR must not contain blanks or quotes: $STATE"
    SYSTEM_CONF_LINK=$STATE/slurm.conf
    case $1 in
        start) cmd_start ;;
        stop) stop_cluster ;;
    esac
}

main "$@"
