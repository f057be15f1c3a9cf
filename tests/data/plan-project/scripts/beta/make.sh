test -n "$TOKEN" || exit 1
echo "beta image"
echo "os=$image_os kubernetes=$kubernetes_semver"
echo "greeting=$greeting"
