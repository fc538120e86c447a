#!/usr/bin/env bash
# The real data sets the tool reads from Debian's packages: Fashion-MNIST's idx files
# (dataset-fashion-mnist, under /usr/share/datasets/fashion-mnist/). Installs the package when
# run as root where apt-get exists (make quickstart, make test, CI); otherwise says how.
# Nothing is ever downloaded at run time: `data: {name: fashion_mnist}` reads these files, or
# a folder holding the four idx files (`path:`).
set -euo pipefail

[ -d /usr/share/datasets/fashion-mnist ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "data: installing dataset-fashion-mnist from Debian's packages" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
    >/dev/null 2>&1 || echo "data: apt-get install dataset-fashion-mnist failed" >&2
else
  echo "data: Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (as root)," \
    "or give data.path a folder holding its four idx files" >&2
fi
