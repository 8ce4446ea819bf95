# One package of the throwaway repository that tests/emerge.rs builds eight
# times over (js-test/p1 ... js-test/p8). It records the MAKEFLAGS its build
# saw, then one line when it enters its first phase and one when it leaves its
# last, so the test can tell how many builds overlapped. When the test names
# the number of builds it expects at once (log/want), each build waits in
# src_install until that many have arrived, so they overlap in every run
# however slow the machine; the sleep after it gives a build beyond the
# budget the time to start and show up in the count. A marker is named after
# the package and the prefix (the last part of EPREFIX), so that builds of two
# prefixes whose log/barrier is one shared directory count apart.

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
	mkdir -p "${EPREFIX}/log/barrier" || die
	: > "${EPREFIX}/log/barrier/${PN}.${EPREFIX##*/}" || die
	if [[ -f ${EPREFIX}/log/want ]]; then
		local want markers i
		want=$(<"${EPREFIX}/log/want") || die
		# 30 s at most; then the peak shows what was missing.
		for (( i = 0; i < 600; i++ )); do
			markers=( "${EPREFIX}"/log/barrier/* )
			(( ${#markers[@]} >= want )) && break
			sleep 0.05
		done
	fi
	sleep 2
	echo "end ${PN} $(date +%s%N)" >> "${EPREFIX}/log/builds" || die
}
