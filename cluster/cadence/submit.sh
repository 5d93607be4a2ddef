#!/bin/sh
# Render one RayJob template of cluster/cadence/ for today, create it, wait for its end.
# Run by the CronJobs of cluster/cadence-cronjobs.yaml (image with kubectl and a POSIX sh):
#   sh /cadence/submit.sh /cadence/daily-rayjob.yaml
# Print the rendered manifest only, creating nothing (STRATA_CADENCE_NOW: epoch seconds):
#   STRATA_CADENCE_DRY_RUN=1 STRATA_CADENCE_NOW=1764527400 sh submit.sh daily-rayjob.yaml
# Dates are platform time, UTC+8 (strata's as-of), whatever the pod's clock zone: TZ=UTC-8 is
# the POSIX spelling of UTC+8 and needs no tzdata. Placeholders in a template:
#   @AS_OF@        today at local midnight, 2026-12-01T00:00:00+08:00 (the jobs' --as-of)
#   @TODAY@        2026-12-01 (the exclusive end of a report window)
#   @WEEK_AGO@     2026-11-24 (the start of the weekly window)
#   @MONTH_START@  2026-11-01 (the first day of the previous month)
# Exit status: 0 when the RayJob's Ray job SUCCEEDED, 1 otherwise (the CronJob's Job fails).
set -eu

template=$1
now=${STRATA_CADENCE_NOW:-$(date -u +%s)}
day() { TZ=UTC-8 date -d "@$1" +%Y-%m-%d; }
today=$(day "$now")
week_ago=$(day $((now - 7 * 86400)))
year=$(TZ=UTC-8 date -d "@$now" +%Y)
month=$(TZ=UTC-8 date -d "@$now" +%m)
month=${month#0}
if [ "$month" -eq 1 ]; then
    month_start=$(printf '%04d-12-01' $((year - 1)))
else
    month_start=$(printf '%04d-%02d-01' "$year" $((month - 1)))
fi
as_of="${today}T00:00:00+08:00"
rendered=$(sed -e "s/@AS_OF@/$as_of/g" -e "s/@TODAY@/$today/g" \
    -e "s/@WEEK_AGO@/$week_ago/g" -e "s/@MONTH_START@/$month_start/g" "$template")

if [ -n "${STRATA_CADENCE_DRY_RUN:-}" ]; then
    printf '%s\n' "$rendered"
    exit 0
fi

name=$(printf '%s\n' "$rendered" | kubectl create -f - -o name)
echo "created $name (as-of $as_of)"
# The CronJob's Job has an activeDeadlineSeconds above the RayJob's own: no endless wait.
while :; do
    state=$(kubectl get "$name" -o jsonpath='{.status.jobDeploymentStatus}')
    case $state in
        Complete)
            status=$(kubectl get "$name" -o jsonpath='{.status.jobStatus}')
            echo "$name: $status"
            if [ "$status" = SUCCEEDED ]; then exit 0; fi
            exit 1
            ;;
        Failed)
            echo "$name failed: $(kubectl get "$name" -o jsonpath='{.status.reason}: {.status.message}')" >&2
            exit 1
            ;;
    esac
    sleep 30
done
