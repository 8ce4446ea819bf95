# One package of the throwaway repository that tests/emerge.rs builds eight
# times over (js-test/p1 ... js-test/p8). It records the MAKEFLAGS its build
# saw, then one line when it enters its first phase and one when it leaves its
# last, so the test can tell how many builds overlapped. The sleep is longer
# than the few hundred milliseconds emerge needs to start the next build.

EAPI=8

DESCRIPTION="jsrun test package"
HOMEPAGE="https://example.invalid/"
S=${WORKDIR}

LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"

pkg_setup() {
	printf '%s\n' "${MAKEFLAGS-}" > "${EPREFIX}/log/makeflags.${PN}" || die
	echo "start ${PN} $(date +%s%N)" >> "${EPREFIX}/log/builds" || die
}

src_install() {
	sleep 2
	echo "end ${PN} $(date +%s%N)" >> "${EPREFIX}/log/builds" || die
}
