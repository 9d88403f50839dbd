#!/usr/bin/env bash
# Enhance a low-light video with SGZ, sound and timing kept:
#   bash test_video.sh INPUT.mp4 [OUTPUT.mp4] [options of demo/make_video.py, e.g. --temporal_smoothing]
# OUTPUT defaults to INPUT_enhanced.mp4 beside the input; frames stream through the network, none go to disk.
#
# The official variables still work: $video_path and $save_path stand for INPUT and OUTPUT, and with
# $image_lowlight_folder and $image_folder both set the official frames workflow runs (video -> frames in
# $image_lowlight_folder -> test.py -> frames in $image_folder -> video; the options go to test.py).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

input=${video_path:-}
output=${save_path:-}
if [[ $# -gt 0 && $1 != -* ]]; then input=$1; shift; fi
if [[ $# -gt 0 && $1 != -* ]]; then output=$1; shift; fi
if [[ -z $input ]]; then
  echo "usage: bash test_video.sh INPUT.mp4 [OUTPUT.mp4] [options of demo/make_video.py] (or set \$video_path)" >&2
  exit 2
fi
save=()
if [[ -n $output ]]; then save=(--save_path "$output"); fi

if [[ -n ${image_lowlight_folder:-} && -n ${image_folder:-} ]]; then
  python "$root/demo/make_video.py" --choice V2I --video_path "$input" --image_lowlight_folder "$image_lowlight_folder"
  python "$root/test.py" --input_dir "$image_lowlight_folder" --test_dir "$image_folder" "$@"
  python "$root/demo/make_video.py" --choice I2V --video_path "$input" --image_folder "$image_folder" "${save[@]}"
else
  exec python "$root/demo/make_video.py" --video_path "$input" "${save[@]}" "$@"
fi
