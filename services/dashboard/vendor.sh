#!/usr/bin/env bash
# Re-vendor the dashboard's third-party files from the npm registry (pinned versions; npm
# checks each tarball against the registry's integrity hash). Run from the repository root:
#   services/dashboard/vendor.sh
# Nothing is fetched at run time: the service serves these copies (static/vendor/LICENSES.md).
set -euo pipefail
out=services/dashboard/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent leaflet@1.9.4 uplot@1.6.32 topojson-client@3.1.0 world-atlas@2.0.2 >/dev/null)
for tgz in "$work"/*.tgz; do
  mkdir -p "${tgz%.tgz}" && tar xzf "$tgz" -C "${tgz%.tgz}"
done
copy() { mkdir -p "$out/$1" && cp "$work/$2/package/$3" "$out/$1/"; }
copy leaflet leaflet-1.9.4 dist/leaflet.js
copy leaflet leaflet-1.9.4 dist/leaflet.css
copy leaflet leaflet-1.9.4 LICENSE
copy uplot uplot-1.6.32 dist/uPlot.iife.min.js
copy uplot uplot-1.6.32 dist/uPlot.min.css
copy uplot uplot-1.6.32 LICENSE
copy topojson topojson-client-3.1.0 dist/topojson-client.min.js
copy topojson topojson-client-3.1.0 LICENSE
copy world-atlas world-atlas-2.0.2 countries-50m.json
copy world-atlas world-atlas-2.0.2 LICENSE
echo "vendored into $out"
