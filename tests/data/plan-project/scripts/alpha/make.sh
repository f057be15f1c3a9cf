echo "alpha image"
echo "os=$image_os kubernetes=$kubernetes_semver"
echo "greeting=$greeting"
