echo "beta checked $1" > check.txt
