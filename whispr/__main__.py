from whispr.cli import main

raise SystemExit(main())
