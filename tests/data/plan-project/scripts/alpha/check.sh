echo "alpha checked $1" > check.txt
