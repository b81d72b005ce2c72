#!/usr/bin/env bash
# bash preprocess.sh DATA_DIR [LIBRISPEECH_ROOT]
#
# The original MelHuBERT compression command: LibriSpeech train-clean-360 -> DATA_DIR with the
# original layout and names:
#   DATA_DIR/feature/<utt>.npy       normalised 40-bin log-Mel, 10 ms frames
#   DATA_DIR/cluster/<utt>.npy       K-means labels (512 clusters), one per frame
#   DATA_DIR/mean-std.npy            (2, 40): mean, std of the 360 h
#   DATA_DIR/libri-360-data-cluster-pair.csv   file_path,label_path,length (set datarc.sets to it)
# plus DATA_DIR/kmeans-k512.npy (the centres) and DATA_DIR/libri-360-data-cluster-pair.json (the run record).
#
# The original downloaded a prepared Kaldi archive; here the features and labels are computed from
# the audio (preprocess.py). LibriSpeech is looked for at LIBRISPEECH_ROOT (2nd argument or
# environment variable), else ./LibriSpeech, else DATA_DIR/LibriSpeech; it must contain
# train-clean-360/ (https://www.openslr.org/12). PREPROCESS_ARGS passes further preprocess.py
# options (e.g. "--num-clusters 100 --workers 8").
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -ge 1 && ( "$1" == -h || "$1" == --help ) ]] && exit 0
    exit 2
fi
DATA_DIR=$1
ROOT=${2:-${LIBRISPEECH_ROOT:-}}
if [[ -z "$ROOT" ]]; then
    for candidate in ./LibriSpeech "$DATA_DIR/LibriSpeech"; do
        if [[ -d "$candidate/train-clean-360" ]]; then ROOT=$candidate; break; fi
    done
fi
if [[ -z "$ROOT" || ! -d "$ROOT/train-clean-360" ]]; then
    echo "preprocess.sh: error: no LibriSpeech train-clean-360 found (looked at ${ROOT:-./LibriSpeech and $DATA_DIR/LibriSpeech});" \
         "download it from https://www.openslr.org/12 and run: bash preprocess.sh $DATA_DIR /path/to/LibriSpeech" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-}
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$HERE/.venv/bin/python" ]]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd)
ROOT=$(cd "$ROOT" && pwd)
LISTS="$DATA_DIR/file-lists"

# train-clean-360 alone: its file list comes out as train960.tsv (the split's only train subset here).
"$PYTHON" "$HERE/prepare_data.py" --data "$ROOT/train-clean-360" --out "$LISTS"
cp "$LISTS/train960.tsv" "$DATA_DIR/libri-360.tsv"
# shellcheck disable=SC2086  # PREPROCESS_ARGS is a list of options
"$PYTHON" "$HERE/preprocess.py" --tsv "$DATA_DIR/libri-360.tsv" --out "$DATA_DIR" \
    --manifest-name libri-360-data-cluster-pair ${PREPROCESS_ARGS:-}
echo "preprocess.sh: wrote $DATA_DIR/libri-360-data-cluster-pair.csv; set datarc.sets in config_runner.yaml to [ $DATA_DIR/libri-360-data-cluster-pair.csv ]"
