#!/usr/bin/env bash
# Runs one test section against one nginx build with a banner line before and a result line after,
# so that a CI log shows each build's result:
#   ==== integration tests on nginx 1.28.3 (/…/build/nginx-1.28/sbin/nginx) ====
#   ...
#   ==== integration tests on nginx 1.28.3: passed (212 s) ====
# Exits with the command's status. With DYNUP_SUMMARY set (`make test`), also appends the result
# line to that file, for the summary at the end.
#
# usage: section.sh "<what>" <nginx binary> <command> [args...]
set -uo pipefail

what=${1:?what}
nginx=${2:?nginx binary}
shift 2

version=$("$nginx" -v 2>&1 | sed -n 's|^nginx version: [^/]*/\([^ ]*\).*|\1|p')
label="$what on nginx ${version:-(unknown version)}"
echo "==== $label ($nginx) ===="
started=$(date +%s)
"$@"
status=$?
took=$(($(date +%s) - started))
if [ "$status" -eq 0 ]; then
    result="$label: passed ($took s)"
else
    result="$label: FAILED (exit $status, $took s)"
fi
echo "==== $result ===="
if [ -n "${DYNUP_SUMMARY:-}" ]; then
    echo "$result" >>"$DYNUP_SUMMARY"
fi
exit "$status"
