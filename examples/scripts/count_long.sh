#!/bin/sh
# Counts the prompts (column 2 of a CSV with a header) that have at least $2 words.
awk -F, -v m="$2" 'NR > 1 { if (split($2, w, " ") >= m) k++ } END { print "prompts,long_prompts"; print NR - 1 "," k + 0 }' "$1"
