#!/bin/sh
# Start redis-server with brandbot's ACL users (users.acl next to this script, or $BRANDBOT_REDIS_ACL_TEMPLATE).
#
# Each tier's password comes from the environment (BRANDBOT_REDIS_WORKER_PASSWORD, …) and only its
# SHA-256 reaches the ACL file, written with mode 600 to $BRANDBOT_REDIS_ACL_FILE. A user whose
# password is unset stays off. Arguments are passed on to redis-server:
#
#   BRANDBOT_REDIS_WORKER_PASSWORD=… BRANDBOT_REDIS_FRONTEND_PASSWORD=… start-redis.sh --appendonly yes
set -eu

template=${BRANDBOT_REDIS_ACL_TEMPLATE:-$(dirname "$0")/users.acl}
acl_file=${BRANDBOT_REDIS_ACL_FILE:-/tmp/brandbot-users.acl}

umask 077
: >"$acl_file"
grep -v -e '^#' -e '^[[:space:]]*$' "$template" | while IFS= read -r line; do
    name=$(printf '%s\n' "$line" | sed -n 's/.*@PASSWORD:\([A-Z0-9_]*\)@.*/\1/p')
    if [ -n "$name" ]; then
        eval "password=\${$name:-}"
        if [ -n "$password" ]; then
            hash=$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)
            state="on #$hash"
        else
            state="off"
        fi
        line=$(printf '%s\n' "$line" | sed "s/@PASSWORD:$name@/$state/")
    fi
    printf '%s\n' "$line" >>"$acl_file"
done

exec redis-server --aclfile "$acl_file" "$@"
