complete -c jsrun -s j -l jobs -d 'Job slots: at most N jobs at once (-jN, -j N or --jobs=N). Bare -j or -j0: the number of CPUs; before a command write -j -- COMMAND. With no usable jobserver around, jsrun creates one with N slots for its children' -r
complete -c jsrun -s l -l load-average -d 'While the 1-minute load average is at least LOAD: in a pool of jsrun\'s own, hold back the tokens that come back, so the whole tree starts no new job; under another pool, start no further job of jsrun\'s own (one may always run)' -r
complete -c jsrun -l min-memory-avail -d 'While the memory available (the least of MemAvailable and, for each cgroup up to the root, its limit less its usage) is below SIZE (512M, 4G, bytes): in a pool of jsrun\'s own, hold back the tokens that come back; under another pool, run jsrun\'s own jobs one at a time' -r
complete -c jsrun -l max-memory-pressure -d 'While the memory pressure stall (PSI "some avg10", in percent) is at least PCT: in a pool of jsrun\'s own, hold back the tokens that come back; under another pool, run jsrun\'s own jobs one at a time. Without PSI on the machine: a warning, ignored' -r
complete -c jsrun -l weight -d 'Every job needs K slots of the pool (the implicit slot counts as one) and holds them until it ends, e.g. `+jsrun --weight=4 -- ld ...` for a link step. K beyond the pool\'s size is capped, with a warning' -r
complete -c jsrun -l jobserver-style -d 'Kind of jobserver to create. Default: fifo, or pipe when the command is a GNU make older than 4.4' -r -f -a "fifo\t'A named pipe in a private directory (make >= 4.4, ninja, Portage, cargo)'
pipe\t'An inherited anonymous pipe (make <= 4.3)'"
complete -c jsrun -l jobserver-group -d 'Let GROUP use the fifo jsrun creates (directory 0710, fifo 0660 instead of 0700 and 0600), e.g. the build user of emerge\'s FEATURES=userpriv' -r
complete -c jsrun -l jobserver -d 'Use this jobserver (fifo:PATH or R,W) instead of MAKEFLAGS, with no implicit slot: a token is taken before the first job too' -r
complete -c jsrun -s O -l output-sync -d 'Group the output of jobs: by line (-Oline) or by job (-Ojob, or a bare -O). The mode is attached, as in make: -O line runs a command named line' -r -f -a "none\t'Children write straight to jsrun\'s stdout and stderr'
line\t'Whole lines only: lines of different jobs never mix'
job\t'A job\'s output in one piece when it ends'"
complete -c jsrun -l joblog -d 'Write one tab-separated row per finished job to FILE' -r -F
complete -c jsrun -l trace -d 'Write a Chrome trace (JSON for Perfetto or chrome://tracing) to FILE: a row per slot with a span per job, and the waits for tokens' -r -F
complete -c jsrun -l serve -d 'Serve a system jobserver at PATH (a fifo, created or replaced) with N tokens (-jN; default one per CPU) until SIGINT or SIGTERM, governed by -l, --min-memory-avail and --max-memory-pressure, resized by SIGUSR1/SIGUSR2, giving back the tokens of holders that are gone. No command. For make.conf (MAKEFLAGS="-jN --jobserver-auth=fifo:PATH") and hosts running several builds' -r -F
complete -c jsrun -l no-pause -d 'With --min-memory-avail or --max-memory-pressure in a pool of jsrun\'s own: only hold back new starts; never pause running jobs (by default, while memory keeps running short, jobs are paused youngest first and resumed oldest first)'
complete -c jsrun -s k -l keep-going -d 'After a failure, keep starting the remaining jobs (default: start no new job, let running ones finish)'
complete -c jsrun -l tag -d 'Prefix each output line with the job\'s value (implies -Oline unless -O is given)'
complete -c jsrun -s v -l verbose -d 'Print each command to stderr as it starts'
complete -c jsrun -s n -l dry-run -d 'Print the commands, run nothing (also when MAKEFLAGS says make -n)'
complete -c jsrun -l stats -d 'Print a summary on stderr at exit: jobs, failures, peak concurrency, tokens, time spent waiting for tokens, slot utilisation'
complete -c jsrun -l progress -d 'Show a progress line on stderr while jobs run (only when stderr is a terminal)'
complete -c jsrun -l info -d 'Print the jobserver jsrun would use, and exit'
complete -c jsrun -s h -l help -d 'Print help (see more with \'--help\')'
complete -c jsrun -s V -l version -d 'Print version'
