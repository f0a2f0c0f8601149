# Use ccache when present: rebuilds on 2 cores are dominated by torch headers.
find_program(DHA_CCACHE ccache)
if(DHA_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  # pch_defines/time_macros: without them ccache refuses to cache TUs that use the PCH.
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
      ${DHA_CCACHE})
  message(STATUS "dha: using ccache (${DHA_CCACHE})")
endif()
