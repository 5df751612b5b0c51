#!/bin/sh
# Counts the rows of a CSV (header excluded) whose `text` has at least $2 words.
awk -F, -v min="$2" 'NR > 1 { n = split($1, w, " "); if (n >= min) c++ } END { print "long"; print c + 0 }' "$1"
